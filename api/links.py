"""One-click links of notification emails: ``GET /v1/links/{token}`` shows what the link will
do and a button; ``POST /v1/links/{token}`` does it.

The token (core/links.py) is the credential: signed by the platform (``BIZ_NOTIFY_LINK_SECRET``,
or derived from the decision key), bound to one tenant, pending action, choice (approve or
reject as proposed) and recipient, and expiring. The decision goes the way of every decision:
the recipient as decider (their email, the role they were notified in, the token's tenant),
signed with the API's decision key, sent as the ``decide`` update, whose validator refuses what
the protocol refuses; it is recorded with ``via: link``. A tampered link is 400, an expired one
410, one whose tenant is not the action's 404, a decided action 409; never a 5xx.
"""

from __future__ import annotations

import html
import time
from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_400_BAD_REQUEST, HTTP_410_GONE
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError, ConflictError, RejectedError
from api.pending_actions import execute_decision
from api.workflows import QUERY_TIMEOUT
from core.links import TOKEN_PATTERN, LinkClaims, LinkExpired, LinkInvalid, read_token
from core.names import tenant_of
from core.settings import Settings
from hitl.approvals import HumanDecisions
from hitl.protocol import PLATFORM_ROLES, Decider, DecisionInput, DecisionReceipt, action_id

_TOKEN = Annotated[str, PathParameter(pattern=TOKEN_PATTERN, max_length=2100,
                                      description="The token of an email's one-click link")]


class LinkInvalidError(ApiError):
    status_code = HTTP_400_BAD_REQUEST
    code = "invalid_link"


class LinkExpiredError(ApiError):
    status_code = HTTP_410_GONE
    code = "link_expired"


def _claims(settings: Settings, token: str) -> LinkClaims:
    secret = settings.link_secret()
    if secret is None:
        raise LinkInvalidError("one-click links are not configured on this server")
    try:
        claims = read_token(token, secret, time.time())
    except LinkExpired as exc:
        raise LinkExpiredError(str(exc)) from None
    except LinkInvalid as exc:
        raise LinkInvalidError(str(exc)) from None
    if tenant_of(claims.workflow_id) != claims.tenant_id:  # never signed so; refused all the same
        raise NotFoundException("pending action not found")
    return claims


def _page(title: str, body: str, status: int = HTTP_200_OK) -> Response[str]:
    return Response(
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        "<meta name=\"viewport\" content=\"width=device-width\"></head>"
        f"<body style=\"font-family: sans-serif; max-width: 40em; margin: 2em auto\"><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>", media_type=MediaType.HTML, status_code=status)


def _console(settings: Settings, claims: LinkClaims) -> str:
    url = f"{settings.link_base_url()}/console/actions/{action_id(claims.workflow_id, claims.request_id)}"
    return f"<p><a href=\"{html.escape(url)}\">Open it in the console</a></p>"


def _decider(c: LinkClaims) -> Decider:
    platform = c.role in PLATFORM_ROLES
    return Decider(sub=c.recipient, roles=[c.role], tenant_id=None if platform else c.tenant_id,
                   tenants=[c.tenant_id] if c.role == "partner" else [])


async def _exists(temporal: Client, c: LinkClaims) -> None:
    try:
        await temporal.get_workflow_handle(c.workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundException("pending action not found") from None
        raise


class LinksController(Controller):
    path = "/v1/links"
    tags = ["notifications"]

    @get("/{token:str}", operation_id="open_link", media_type=MediaType.HTML,
         summary="What an email's one-click link does, with a button to do it",
         description="Public: the signed token is the credential. 400: altered or malformed; 410: expired; "
                     "404: no such action; 409 page: already decided or closed.",
         raises=[LinkInvalidError, LinkExpiredError, NotFoundException])
    async def open_link(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client], token: _TOKEN) -> Response[str]:
        settings: Settings = request.app.state.settings
        c = _claims(settings, token)
        handle = temporal.get_workflow_handle(c.workflow_id)
        try:
            running = (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            view = await handle.query(HumanDecisions.approvals, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
                raise
            raise NotFoundException("pending action not found") from None
        except Exception:  # noqa: BLE001 - not an approval workflow
            raise NotFoundException("pending action not found") from None
        a = view.open
        if a is None or a.request.request_id != c.request_id or not running:  # (a run canceled while asking)
            return _page("Already closed", "<p>This approval was already decided or has closed.</p>"
                         + _console(settings, c), status=409)
        verb = "Approve" if c.choice == "approve" else "Reject"
        body = (f"<p>{html.escape(a.request.title)}</p>"
                + (f"<p>{html.escape(a.request.summary)}</p>" if a.request.summary else "")
                + f"<form method=\"post\"><button type=\"submit\">{verb} as {html.escape(c.recipient)}</button></form>"
                + _console(settings, c))
        return _page(f"{verb} this?", body)

    @post("/{token:str}", operation_id="use_link", media_type=MediaType.HTML, status_code=HTTP_200_OK,
          summary="Decide as an email's one-click link says (approve or reject as proposed)",
          description="Public: the signed token is the credential. The decision is the `decide` update, "
                      "recorded with `via: link`. 400: altered or malformed; 410: expired; 404: no such "
                      "action; 409: already decided or closed; 403/422: refused by the approval.",
          raises=[LinkInvalidError, LinkExpiredError, NotFoundException, ConflictError, RejectedError])
    async def use_link(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client], token: _TOKEN) -> Response[str]:
        settings: Settings = request.app.state.settings
        c = _claims(settings, token)
        receipt: DecisionReceipt = await execute_decision(
            temporal, settings, c.workflow_id,
            DecisionInput(request_id=c.request_id, decision=c.choice, by=_decider(c), via="link"),
            lambda: _exists(temporal, c))
        done = "Approved" if c.choice == "approve" else "Rejected"
        more = "" if receipt.closed else (f"<p>{receipt.approvals} of {receipt.approvals_needed} approvals so far.</p>")
        return _page(f"{done}, thank you", f"<p>Recorded for {html.escape(receipt.decided_by)} at "
                     f"{receipt.decided_at:%Y-%m-%d %H:%M} UTC.</p>{more}" + _console(settings, c))


def links_router() -> Router:
    return Router(path="/", route_handlers=[LinksController])
