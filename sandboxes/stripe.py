"""The Stripe sandbox: localstripe (a Stripe API fake) on loopback, its store kept in memory.

``bizosaas dev`` runs it (``python -m sandboxes.stripe --port P``) unless
``BIZ_STRIPE_API_KEY`` names a real Stripe account; the tests run it too. localstripe keeps its
state in a fixed ``/tmp/localstripe.pickle`` and binds every interface; here the store stays in
memory (parallel stacks never share or clobber it) and only loopback is bound. localstripe
accepts any ``sk_test_...`` key.

localstripe has no Stripe Connect; :func:`add_connect` adds the part the platform pays
affiliates with, on the same app, with Stripe's paths, form-encoded parameters, objects and
error bodies (so ``stripe-python`` runs against it unchanged):

- ``POST /v1/accounts``, ``GET /v1/accounts/{id}``, ``GET /v1/accounts``: connected accounts
  (``express``, ``custom`` or ``standard``), ready at once: charges and payouts enabled.
- ``POST /v1/transfers``, ``GET /v1/transfers/{id}``, ``GET /v1/transfers``: money sent to a
  connected account; listed newest first, filtered by ``destination`` and ``transfer_group``.
  The platform balance is unlimited (no ``balance_insufficient``) and no balance transactions
  or webhook events are made for them.
- ``Idempotency-Key`` as Stripe keeps it on these POSTs for 24 hours: the same key with the same
  parameters answers the first result again (header ``Idempotent-Replayed: true``), creating
  nothing; with other parameters or on another endpoint it is 400 ``idempotency_error``. Only
  successful results are kept: a refused request may be sent again with its key.
- Errors as Stripe's: ``{"error": {"type": "invalid_request_error", "code", "param",
  "message"}}``, e.g. 400 ``parameter_missing``, ``parameter_unknown``, ``resource_missing``
  (``No such destination: 'acct_x'``) and 404 ``resource_missing`` for an unknown id.

``DELETE /_config/data`` (localstripe's flush) forgets the Connect objects and keys too.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import json
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IDEMPOTENCY_TTL_SECONDS = 24 * 3600  # how long Stripe keeps an idempotency key
ACCOUNT_TYPES = ("custom", "express", "standard")
BUSINESS_TYPES = ("company", "government_entity", "individual", "non_profit")
TRANSFER_SOURCE_TYPES = ("bank_account", "card", "fpx")

# The parameters Stripe's API takes on each endpoint; any other is 400 parameter_unknown.
ACCOUNT_PARAMS = frozenset({
    "account_token", "bank_account", "business_profile", "business_type", "capabilities", "company", "controller",
    "country", "default_currency", "documents", "email", "expand", "external_account", "groups", "individual",
    "metadata", "settings", "tos_acceptance", "type",
})
TRANSFER_PARAMS = frozenset({
    "amount", "currency", "description", "destination", "expand", "metadata", "source_transaction", "source_type",
    "transfer_group",
})
LIST_PARAMS = frozenset({"created", "ending_before", "expand", "limit", "starting_after"})

# A connected account's default currency when none is given, by country (otherwise usd).
_COUNTRY_CURRENCY = {
    "AU": "aud", "BR": "brl", "CA": "cad", "CH": "chf", "DK": "dkk", "GB": "gbp", "HK": "hkd", "IN": "inr",
    "JP": "jpy", "MX": "mxn", "NO": "nok", "NZ": "nzd", "PL": "pln", "SE": "sek", "SG": "sgd", "US": "usd",
    **dict.fromkeys(("AT", "BE", "CY", "DE", "EE", "ES", "FI", "FR", "GR", "HR", "IE", "IT", "LT", "LU", "LV",
                     "MT", "NL", "PT", "SI", "SK"), "eur"),
}


class StripeError(Exception):
    """A refused request, answered in Stripe's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": error_type, "message": message}
        if code is not None:
            self.body["code"] = code
        if param is not None:
            self.body["param"] = param

    def response(self) -> web.Response:
        return web.json_response({"error": self.body}, status=self.status)


def _missing(param: str) -> StripeError:
    return StripeError(400, f"Missing required param: {param}.", param=param, code="parameter_missing")


def _no_such(what: str, ident: str, param: str, status: int = 404) -> StripeError:
    return StripeError(status, f"No such {what}: '{ident}'", param=param, code="resource_missing")


@dataclass
class _Replay:
    path: str
    params: str  # the request's parameters, canonical JSON
    body: dict[str, Any]
    at: float


@dataclass
class ConnectStore:
    """The Connect objects of one sandbox, in creation order (tests may read them)."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    idempotency: dict[str, _Replay] = field(default_factory=dict)  # by Idempotency-Key

    def clear(self) -> None:
        self.accounts.clear()
        self.transfers.clear()
        self.idempotency.clear()


CONNECT = web.AppKey("bizosaas_connect", ConnectStore)


def _new_id(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


# --- Stripe's form encoding: metadata[k]=v, expand[0]=x, created[gte]=n ---------------------

_NAME = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")


def _unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        match = _NAME.match(name)
        if match is None:
            raise StripeError(400, f"Invalid parameter name: {name}", param=name)
        keys = [match.group(1), *_SUBKEY.findall(match.group(2))]
        node = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if key == "":  # name[]=v: a list
                if not isinstance(node, list):
                    raise StripeError(400, f"Invalid array: {name}", param=keys[0])
                node.append(value if last else {})
                node = node[-1]
                continue
            if not isinstance(node, dict):
                raise StripeError(400, f"Invalid hash: {name}", param=keys[0])
            if last:
                node[key] = value
            else:
                child = node.get(key)
                if not isinstance(child, (dict, list)):
                    child = [] if keys[depth + 1] == "" else {}
                    node[key] = child
                node = child
    expand = out.get("expand")
    if isinstance(expand, dict):  # expand[0]=a&expand[1]=b
        out["expand"] = [expand[k] for k in sorted(expand, key=lambda k: int(k) if k.isdigit() else -1)]
    return out


async def _form(request: web.Request) -> dict[str, Any]:
    return _unflatten((await request.post()).items())


def _query(request: web.Request) -> dict[str, Any]:
    return _unflatten(request.query.items())


def _authenticated(request: web.Request) -> bool:
    """As localstripe: any secret key (``sk_...``), as a bearer token or HTTP basic user."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Basic":
        try:
            credentials = base64.b64decode(credentials).decode().split(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme != "Bearer":
        return False
    return credentials.startswith("sk_") and len(credentials) > 5


def _endpoint(handler: Callable[[ConnectStore, web.Request], Awaitable[web.Response]],
              connect: ConnectStore) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            if not _authenticated(request):
                raise StripeError(401, "Unauthorized")
            return await handler(connect, request)
        except StripeError as err:
            return err.response()
    return run


# --- parameter checks -----------------------------------------------------------------------

def _no_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeError(400, f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def _string(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {value!r}", param=name, code="parameter_invalid_string")
    return value


def _integer(value: Any, param: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value.strip()):
        raise StripeError(400, f"Invalid integer: {value}", param=param, code="parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeError(400, f"This value must be greater than or equal to {minimum}.", param=param,
                          code="parameter_invalid_integer")
    if maximum is not None and number > maximum:
        raise StripeError(400, f"This value must be less than or equal to {maximum}.", param=param,
                          code="parameter_invalid_integer")
    return number


def _metadata(params: Mapping[str, Any]) -> dict[str, str]:
    value = params.get("metadata")
    if value in (None, ""):  # metadata= (empty): none
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise StripeError(400, "Invalid object", param="metadata", code="parameter_invalid_string")
    if len(value) > 50:
        raise StripeError(400, "You can specify up to 50 keys in metadata.", param="metadata")
    for key, item in value.items():
        if len(key) > 40:
            raise StripeError(400, f"Metadata keys can have up to 40 characters; {key!r} is longer.",
                              param=f"metadata[{key}]")
        if len(item) > 500:
            raise StripeError(400, f"Metadata values can have up to 500 characters; the value of {key!r} is longer.",
                              param=f"metadata[{key}]")
    return dict(value)


def _currency(value: str | None, param: str) -> str:
    if value is None:
        raise _missing(param)
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise StripeError(400, f"Invalid currency: {value.lower()}.", param=param)
    return value.lower()


def _expand(params: Mapping[str, Any], expandable: frozenset[str], prefix: str = "") -> list[str]:
    """The ``expand[]`` paths, each without ``prefix`` (``data.`` on a list)."""
    value = params.get("expand")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StripeError(400, "Invalid array", param="expand")
    paths = []
    for path in value:
        short = path[len(prefix):] if prefix and path.startswith(prefix) else None if prefix else path
        if short not in expandable:
            raise StripeError(400, f"This property cannot be expanded ({path}).", param="expand")
        paths.append(short)
    return paths


def _created_filter(value: Any) -> Callable[[int], bool]:
    if value is None:
        return lambda _: True
    if isinstance(value, str):
        exact = _integer(value, "created")
        return lambda c: c == exact
    if not isinstance(value, dict):
        raise StripeError(400, "Invalid created: must be an integer or a hash", param="created")
    checks = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
    bounds = []
    for op, bound in value.items():
        if op not in checks:
            raise StripeError(400, f"Received unknown parameter: created[{op}]", param=f"created[{op}]",
                              code="parameter_unknown")
        bounds.append((checks[op], _integer(bound, f"created[{op}]")))
    return lambda c: all(check(c, b) for check, b in bounds)


def _page(url: str, items: list[dict[str, Any]], params: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A Stripe list object of ``items`` (newest first): ``limit``, ``starting_after``, ``ending_before``."""
    limit = 10 if params.get("limit") is None else _integer(params["limit"], "limit", minimum=1, maximum=100)
    after, before = _string(params, "starting_after"), _string(params, "ending_before")
    if after and before:
        raise StripeError(400, "You may only specify one of these parameters: ending_before, starting_after.",
                          param="starting_after")
    ids = [item["id"] for item in items]
    if after:
        if after not in ids:
            raise _no_such(what, after, "starting_after", status=400)
        rest = items[ids.index(after) + 1:]
        data, has_more = rest[:limit], len(rest) > limit
    elif before:
        if before not in ids:
            raise _no_such(what, before, "ending_before", status=400)
        rest = items[:ids.index(before)]
        data, has_more = rest[-limit:], len(rest) > limit
    else:
        data, has_more = items[:limit], len(items) > limit
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


# --- idempotency ----------------------------------------------------------------------------

def _idempotent(connect: ConnectStore, request: web.Request, params: Mapping[str, Any],
                create: Callable[[], dict[str, Any]]) -> web.Response:
    """Run ``create`` once per Idempotency-Key (and answer its first result again)."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return web.json_response(create())
    if len(key) > 255:
        raise StripeError(400, "Idempotency-Key must be at most 255 characters long.")
    now = time.time()
    for old in [k for k, r in connect.idempotency.items() if now - r.at > IDEMPOTENCY_TTL_SECONDS]:
        del connect.idempotency[old]
    fingerprint = json.dumps(params, sort_keys=True)
    replay = connect.idempotency.get(key)
    if replay is not None:
        if replay.path != request.path:
            raise StripeError(400, (
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{replay.path}' vs '{request.path}'). Try using a key other than '{key}' if you meant to execute "
                "a different request."), error_type="idempotency_error")
        if replay.params != fingerprint:
            raise StripeError(400, (
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request."),
                error_type="idempotency_error")
        return web.json_response(replay.body, headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"})
    body = create()
    connect.idempotency[key] = _Replay(path=request.path, params=fingerprint, body=copy.deepcopy(body), at=now)
    return web.json_response(body, headers={"Idempotency-Key": key})


# --- accounts -------------------------------------------------------------------------------

def _new_account(connect: ConnectStore, params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """Check an account's parameters; the function that creates it."""
    _no_unknown(params, ACCOUNT_PARAMS)
    _expand(params, frozenset())
    kind = _string(params, "type")
    if kind is None:
        if params.get("controller") is None:
            raise _missing("type")
        kind = "none"
    elif kind not in ACCOUNT_TYPES:
        raise StripeError(400, "Invalid type: must be one of custom, express, or standard", param="type")
    country = (_string(params, "country") or "US").upper()
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise StripeError(400, (
            f"Country '{country}' is unknown. Try using a 2-character alphanumeric country code instead, such as "
            "'US', 'EG', or 'GB'."), param="country")
    email = _string(params, "email")
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        raise StripeError(400, f"Invalid email address: {email}", param="email", code="email_invalid")
    business_type = _string(params, "business_type")
    if business_type is not None and business_type not in BUSINESS_TYPES:
        raise StripeError(400, "Invalid business_type: must be one of company, government_entity, individual, or "
                               "non_profit", param="business_type")
    default_currency = _string(params, "default_currency")
    default_currency = (_currency(default_currency, "default_currency") if default_currency is not None
                        else _COUNTRY_CURRENCY.get(country, "usd"))
    metadata = _metadata(params)
    requested = params.get("capabilities")
    if requested is not None and not isinstance(requested, dict):
        raise StripeError(400, "Invalid object", param="capabilities")
    capabilities = {name: "active" for name, wanted in (requested or {}).items()
                    if isinstance(wanted, dict) and wanted.get("requested") == "true"}
    profile = params.get("business_profile")
    if profile is not None and not isinstance(profile, dict):
        raise StripeError(400, "Invalid object", param="business_profile")

    def create() -> dict[str, Any]:
        account_id = _new_id("acct_", 16)
        connect.accounts[account_id] = account = {
            "id": account_id, "object": "account", "type": kind, "email": email, "country": country,
            "default_currency": default_currency, "business_type": business_type, "metadata": metadata,
            "created": int(time.time()), "charges_enabled": True, "payouts_enabled": True,
            "details_submitted": True,
            "capabilities": capabilities or {"card_payments": "active", "transfers": "active"},
            "business_profile": {"mcc": None, "name": None, "product_description": None, "support_email": None,
                                 "url": None, **(profile or {})},
            "controller": ({"type": "account"} if kind == "standard"
                           else {"type": "application", "is_controller": True}),
            "external_accounts": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                                  "url": f"/v1/accounts/{account_id}/external_accounts"},
            "requirements": {"alternatives": [], "current_deadline": None, "currently_due": [],
                             "disabled_reason": None, "errors": [], "eventually_due": [], "past_due": [],
                             "pending_verification": []},
        }
        return copy.deepcopy(account)
    return create


async def create_account(connect: ConnectStore, request: web.Request) -> web.Response:
    params = await _form(request)
    return _idempotent(connect, request, params, _new_account(connect, params))


async def retrieve_account(connect: ConnectStore, request: web.Request) -> web.Response:
    _no_unknown(_query(request), frozenset({"expand"}))
    account = connect.accounts.get(request.match_info["id"])
    if account is None:
        raise _no_such("account", request.match_info["id"], "id")
    return web.json_response(account)


async def list_accounts(connect: ConnectStore, request: web.Request) -> web.Response:
    params = _query(request)
    _no_unknown(params, LIST_PARAMS)
    _expand(params, frozenset(), prefix="data.")
    created = _created_filter(params.get("created"))
    items = [a for a in reversed(connect.accounts.values()) if created(a["created"])]
    return web.json_response(_page("/v1/accounts", items, params, "account"))


# --- transfers ------------------------------------------------------------------------------

def _export_transfer(connect: ConnectStore, transfer: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(transfer)
    if "destination" in expand:
        out["destination"] = copy.deepcopy(connect.accounts[transfer["destination"]])
    return out


def _new_transfer(connect: ConnectStore, params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """Check a transfer's parameters; the function that creates it."""
    _no_unknown(params, TRANSFER_PARAMS)
    expand = _expand(params, frozenset({"destination", "balance_transaction", "destination_payment"}))
    if params.get("amount") is None:
        raise _missing("amount")
    amount = _integer(params["amount"], "amount", minimum=1)
    currency = _currency(_string(params, "currency"), "currency")
    destination = _string(params, "destination")
    if not destination:
        raise _missing("destination")
    if destination not in connect.accounts:
        raise _no_such("destination", destination, "destination", status=400)
    source_type = _string(params, "source_type") or "card"
    if source_type not in TRANSFER_SOURCE_TYPES:
        raise StripeError(400, "Invalid source_type: must be one of bank_account, card, or fpx", param="source_type")
    description = _string(params, "description") or None
    transfer_group = _string(params, "transfer_group") or None
    source_transaction = _string(params, "source_transaction") or None
    metadata = _metadata(params)

    def create() -> dict[str, Any]:
        transfer_id = _new_id("tr_", 24)
        connect.transfers[transfer_id] = transfer = {
            "id": transfer_id, "object": "transfer", "amount": amount, "amount_reversed": 0,
            "balance_transaction": None, "created": int(time.time()), "currency": currency,
            "description": description, "destination": destination, "destination_payment": None,
            "livemode": False, "metadata": metadata,
            "reversals": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                          "url": f"/v1/transfers/{transfer_id}/reversals"},
            "reversed": False, "source_transaction": source_transaction, "source_type": source_type,
            "transfer_group": transfer_group,
        }
        return _export_transfer(connect, transfer, expand)
    return create


async def create_transfer(connect: ConnectStore, request: web.Request) -> web.Response:
    params = await _form(request)
    return _idempotent(connect, request, params, _new_transfer(connect, params))


async def retrieve_transfer(connect: ConnectStore, request: web.Request) -> web.Response:
    params = _query(request)
    _no_unknown(params, frozenset({"expand"}))
    expand = _expand(params, frozenset({"destination", "balance_transaction", "destination_payment"}))
    transfer = connect.transfers.get(request.match_info["id"])
    if transfer is None:
        raise _no_such("transfer", request.match_info["id"], "id")
    return web.json_response(_export_transfer(connect, transfer, expand))


async def list_transfers(connect: ConnectStore, request: web.Request) -> web.Response:
    params = _query(request)
    _no_unknown(params, LIST_PARAMS | {"destination", "transfer_group"})
    expand = _expand(params, frozenset({"destination", "balance_transaction", "destination_payment"}),
                     prefix="data.")
    destination, group = _string(params, "destination"), _string(params, "transfer_group")
    created = _created_filter(params.get("created"))
    items = [
        t for t in reversed(connect.transfers.values())
        if destination in (None, t["destination"]) and group in (None, t["transfer_group"]) and created(t["created"])
    ]
    page = _page("/v1/transfers", items, params, "transfer")
    page["data"] = [_export_transfer(connect, t, expand) for t in page["data"]]
    return web.json_response(page)


# --- on the app -----------------------------------------------------------------------------

def add_connect(app: web.Application) -> ConnectStore:
    """Serve Stripe Connect accounts and transfers on ``app`` (localstripe's, before it runs);
    their store. Adding twice adds nothing."""
    if CONNECT in app:
        return app[CONNECT]
    connect = app[CONNECT] = ConnectStore()
    routes: list[tuple[str, str, Callable[[ConnectStore, web.Request], Awaitable[web.Response]]]] = [
        ("POST", "/v1/accounts", create_account),
        ("GET", "/v1/accounts", list_accounts),
        ("GET", "/v1/accounts/{id}", retrieve_account),
        ("POST", "/v1/transfers", create_transfer),
        ("GET", "/v1/transfers", list_transfers),
        ("GET", "/v1/transfers/{id}", retrieve_transfer),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _endpoint(handler, connect))

    @web.middleware
    async def flush_connect(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "DELETE" and request.path == "/_config/data" and response.status < 300:
            connect.clear()
        return response

    app.middlewares.append(flush_connect)
    return connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.stripe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args(argv)

    import localstripe.resources as resources

    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None
    from localstripe.server import app

    add_connect(app)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
