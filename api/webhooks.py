"""Inbound events: signed webhooks (``POST /v1/webhooks/{source}``, public: the signature is
the authentication) and platform events (``POST /v1/events``, a super_admin bearer token).
Both go through the trigger table (api/triggers.py).

Sources and their signatures:

- ``stripe``: ``Stripe-Signature`` verified by the stripe library with a 5-minute tolerance
  (``BIZ_STRIPE_WEBHOOK_SECRET``); the event type is the event's ``type``, its id ``id``, its
  time ``created``.
- ``shopify``: ``X-Shopify-Hmac-Sha256``, base64 HMAC-SHA256 of the raw body with the app's
  secret (``BIZ_SHOPIFY_WEBHOOK_SECRET``); the type is ``X-Shopify-Topic``, the tenant the one
  whose order setting ``shopify_shop_domain`` is ``X-Shopify-Shop-Domain`` (unique across
  tenants), the id ``X-Shopify-Event-Id`` (else ``X-Shopify-Webhook-Id``), the time
  ``X-Shopify-Triggered-At``. Shopify signs the body only: these headers are the sender's word,
  which is why the inbox also knows a replay by its body.
- ``lago``: ``X-Lago-Signature`` by ``X-Lago-Signature-Algorithm``: ``hmac``, base64
  HMAC-SHA256 of the raw body (``BIZ_LAGO_WEBHOOK_SECRET``, the organization's HMAC key), or
  ``jwt`` (Lago's default), an RS256 JWT whose ``data`` claim is the raw body, verified with
  Lago's public key (``BIZ_LAGO_WEBHOOK_PUBLIC_KEY``); the type is
  ``webhook_type``, the id ``X-Lago-Unique-Key`` (the same on every retry). Lago sends no time
  (its headers are the signature, its algorithm and the unique key), so its deliveries are
  never refused as old: they are known again by id and body for as long as the inbox keeps them.
- ``generic``: per tenant. ``X-Biz-Tenant``, ``X-Biz-Timestamp`` (Unix seconds, 5-minute
  tolerance) and ``X-Biz-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`` with any
  unexpired secret of the tenant (table ``webhook_secrets``: two are valid during a
  rotation). Body ``{"id": ..., "type": ..., "data": {...}}``.

Every accepted event is kept in the inbox (api/inbox.py) before it is answered; a replay of a
delivery (the same sender event id, or the same body) answers 200 "duplicate" and starts
nothing. A delivery the sender dates older than the replay window
(``BIZ_WEBHOOKS_REPLAY_WINDOW_HOURS``) is refused like a stale signature.

Answers: 202 started (or acknowledged with no trigger: kept as ``no_trigger``, nothing
started), 200 a replay, or an event whose workflow exists already (same ``workflow_id``), 400 a
body that is not the event, 401 a missing, forged or stale signature or a delivery older than
the window (logged, never with the secret), 404 an unknown or unconfigured source, 413 a body
over ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import jwt
import msgspec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar import Request, Response, Router, post
from litestar.di import NamedDependency
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from temporalio.client import Client

from api import inbox
from api.bodies import decode_json_body
from api.errors import BodyTooLarge
from api.triggers import Event, Fired, InvalidEvent, plan, start
from core.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
TOLERANCE_SECONDS = 300
SOURCES = ("stripe", "shopify", "lago", "generic")
_EVENT_TYPE = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_EVENT_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Unsigned(Exception):
    """A missing, forged or stale signature; the reason is safe to log (no secret in it)."""


class TooOld(Unsigned):
    """A delivery the sender dates before the replay window."""


class GenericEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: _EVENT_ID
    type: _EVENT_TYPE
    data: dict[str, Any] = {}


class PlatformEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An internal platform event, e.g. ``{"id": "evt-1", "type": "tenant.created", "data":
    {"tenant_id": "acme", "name": "Acme", "owner_email": "owner@acme.example"}}``."""

    id: _EVENT_ID
    type: _EVENT_TYPE
    data: dict[str, Any] = {}


class WebhookAnswer(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # started | duplicate | signalled | ignored
    event_type: str
    workflow_id: str | None = None
    run_id: str | None = None


def _event_id(value: Any) -> str | None:
    """The sender's event id as the inbox keys it; one too long to be an id is refused."""
    if value is None or value == "":
        return None
    text = str(value)
    if len(text) > 200:
        raise ValidationException("the event id is longer than 200 characters")
    return text


def _from_unix(seconds: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso_time(value: str, header: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationException(f"{header} is not an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _check_age(event: Event, settings: Settings) -> None:
    """Unsigned when the sender dates the delivery before the replay window."""
    window = timedelta(hours=settings.webhooks.replay_window_hours)
    if event.sent_at is not None and event.sent_at < datetime.now(UTC) - window:
        raise TooOld(f"delivery sent at {event.sent_at.isoformat()}, before the "
                       f"{settings.webhooks.replay_window_hours} h replay window")


def _hmac_b64(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def _json(body: bytes) -> dict[str, Any]:
    value = decode_json_body(body)
    if not isinstance(value, dict):
        raise ValidationException("the body is not a JSON object")
    return value


def _field(value: Any, name: str) -> Any:
    """``value[name]`` when value is a JSON object (None otherwise: the trigger says what is missing)."""
    return value.get(name) if isinstance(value, dict) else None


def _secret(value: Any, source: str) -> str:
    if value is None:
        log.warning("webhook %s: no secret configured; refused", source)
        raise NotFoundException(f"webhook source {source!r} is not configured")
    return value.get_secret_value()


async def _stripe(request: Request, body: bytes, settings: Settings, db: asyncpg.Pool) -> Event:
    import stripe  # the API loads it only when a Stripe event arrives

    secret = _secret(settings.stripe.webhook_secret, "stripe")
    header = request.headers.get("stripe-signature")
    if not header:
        raise Unsigned("no Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(body.decode("utf-8", "replace"), header, secret, TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        # The library's messages name the problem (no valid signature, timestamp outside the
        # tolerance), never the secret.
        raise Unsigned(f"Stripe-Signature: {exc.user_message or 'invalid'}") from None
    event = _json(body)
    obj = _field(_field(event, "data"), "object")
    tenant = _field(_field(obj, "metadata"), "tenant_id")
    if not isinstance(event.get("type"), str):
        raise ValidationException("the Stripe event has no type")
    created = event.get("created")
    return Event(source="stripe", type=event["type"], id=_event_id(event.get("id")), tenant_id=tenant, payload=event,
                 sender="webhook:stripe",
                 sent_at=_from_unix(created) if isinstance(created, int) and not isinstance(created, bool) else None)


# Which tenant a shop domain belongs to, per API process: (pool, read at (monotonic), tenant or None).
SHOP_CACHE_SECONDS = 5.0
_shops: dict[tuple[int, str], tuple[asyncpg.Pool, float, str | None]] = {}


async def shop_tenant(db: asyncpg.Pool, shop: str) -> str | None:
    """The tenant whose order setting ``shopify_shop_domain`` is ``shop``, or None.

    Read at most once per ``SHOP_CACHE_SECONDS`` per shop and API process (a shop's orders
    arrive in bursts): a shop connected to a tenant, moved to another or disconnected is
    followed within 5 seconds. A tenant is only ever named by a delivery the app's secret
    signed."""
    now = time.monotonic()
    cached = _shops.get((id(db), shop))
    if cached is not None and cached[0] is db and now - cached[1] < SHOP_CACHE_SECONDS:
        return cached[2]
    tenant = await db.fetchval(  # one at most: the domain is unique across tenants (migration 0030)
        "SELECT tenant_id FROM tenant_settings WHERE capability = 'order' AND settings ? 'shopify_shop_domain' "
        "AND lower(settings->>'shopify_shop_domain') = $1", shop)
    if len(_shops) >= 10_000:
        _shops.clear()
    _shops[(id(db), shop)] = (db, now, tenant)
    return tenant


async def _shopify(request: Request, body: bytes, settings: Settings, db: asyncpg.Pool) -> Event:
    secret = _secret(settings.shopify.webhook_secret, "shopify")
    given = request.headers.get("x-shopify-hmac-sha256")
    if not given:
        raise Unsigned("no X-Shopify-Hmac-Sha256 header")
    if not _same(_hmac_b64(secret, body), given.strip()):
        raise Unsigned("X-Shopify-Hmac-Sha256 does not match the body")
    topic = request.headers.get("x-shopify-topic")
    if not topic:
        raise ValidationException("no X-Shopify-Topic header")
    payload = _json(body)
    shop = request.headers.get("x-shopify-shop-domain", "").lower()
    tenant = await shop_tenant(db, shop) if shop else None
    triggered = request.headers.get("x-shopify-triggered-at")
    return Event(source="shopify", type=topic, tenant_id=tenant, payload=payload, sender=f"webhook:shopify:{shop}",
                 id=_event_id(request.headers.get("x-shopify-event-id") or request.headers.get("x-shopify-webhook-id")),
                 sent_at=_iso_time(triggered, "X-Shopify-Triggered-At") if triggered else None)


async def _lago(request: Request, body: bytes, settings: Settings, db: asyncpg.Pool) -> Event:
    lago = settings.lago
    if lago.webhook_secret is None and lago.webhook_public_key is None:
        log.warning("webhook lago: neither an HMAC key nor Lago's public key is configured; refused")
        raise NotFoundException("webhook source 'lago' is not configured")
    given = request.headers.get("x-lago-signature")
    if not given:
        raise Unsigned("no X-Lago-Signature header")
    algorithm = request.headers.get("x-lago-signature-algorithm", "hmac").strip().lower()
    if algorithm == "hmac":
        if lago.webhook_secret is None:
            raise Unsigned("an hmac signature, and BIZ_LAGO_WEBHOOK_SECRET is not set")
        if not _same(_hmac_b64(lago.webhook_secret.get_secret_value(), body), given.strip()):
            raise Unsigned("X-Lago-Signature does not match the body")
    elif algorithm == "jwt":
        if lago.webhook_public_key is None:
            raise Unsigned("a jwt signature, and BIZ_LAGO_WEBHOOK_PUBLIC_KEY is not set")
        _lago_jwt(given.strip(), body, lago.webhook_public_key)
    else:
        raise Unsigned(f"unknown X-Lago-Signature-Algorithm {algorithm[:20]!r} (hmac or jwt)")
    payload = _json(body)
    if not isinstance(payload.get("webhook_type"), str):
        raise ValidationException("the Lago event has no webhook_type")
    return Event(source="lago", type=payload["webhook_type"], id=_event_id(request.headers.get("x-lago-unique-key")),
                 tenant_id=None, payload=payload, sender="webhook:lago")


@functools.lru_cache(maxsize=4)
def _rsa_public_key(pem: str) -> Any:
    return load_pem_public_key(pem.encode())


def _lago_jwt(token: str, body: bytes, pem: str) -> None:
    """Lago's ``jwt`` signature: an RS256 JWT by Lago's private key whose ``data`` claim is the
    body itself (``{"data": <the body>, "iss": <Lago's URL>}``, no expiry)."""
    try:
        claims = jwt.decode(token, _rsa_public_key(pem), algorithms=["RS256"],
                            options={"require": ["data"], "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError as exc:
        raise Unsigned(f"X-Lago-Signature is not a JWT of Lago's key ({type(exc).__name__})") from None
    data = claims["data"]
    if not isinstance(data, str) or not hmac.compare_digest(data.encode(), body):
        raise Unsigned("the X-Lago-Signature JWT signs another body")


async def _generic(request: Request, body: bytes, settings: Settings, db: asyncpg.Pool) -> Event:
    tenant = request.headers.get("x-biz-tenant", "")
    stamp = request.headers.get("x-biz-timestamp", "")
    given = request.headers.get("x-biz-signature", "")
    if not (tenant and stamp and given):
        raise Unsigned("X-Biz-Tenant, X-Biz-Timestamp and X-Biz-Signature are required")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        raise Unsigned(f"timestamp outside the {TOLERANCE_SECONDS} s tolerance")
    secrets = await db.fetch(
        """SELECT secret FROM webhook_secrets
           WHERE tenant_id = $1 AND (expires_at IS NULL OR expires_at > now())""", tenant)
    signed = stamp.encode() + b"." + body
    candidates = [s.strip().removeprefix("v1=") for s in given.split(",")]
    if not any(_same(hmac.new(r["secret"].encode(), signed, hashlib.sha256).hexdigest(), c)
               for r in secrets for c in candidates):
        raise Unsigned("X-Biz-Signature matches no secret of the tenant" if secrets else "the tenant has no secret")
    try:
        event = msgspec.convert(decode_json_body(body), GenericEvent)
    except msgspec.ValidationError as exc:
        raise ValidationException(f"not an event: {exc}") from None
    return Event(source="generic", type=event.type, id=event.id, tenant_id=tenant, payload=event.data,
                 sender=f"webhook:generic:{tenant}", sent_at=_from_unix(int(stamp)))


VERIFIERS = {"stripe": _stripe, "shopify": _shopify, "lago": _lago, "generic": _generic}


def _answer(fired: Fired) -> Response[WebhookAnswer]:
    return Response(
        WebhookAnswer(outcome=fired.outcome, event_type=fired.event_type, workflow_id=fired.workflow_id,
                      run_id=fired.run_id),
        status_code=HTTP_200_OK if fired.outcome == "duplicate" else HTTP_202_ACCEPTED,
    )


async def _fire(temporal: Client, db: asyncpg.Pool, event: Event, body: bytes) -> Response[WebhookAnswer]:
    """Keep the event in the inbox, then start its workflow; a replay answers 200 "duplicate"."""
    if not 1 <= len(event.type) <= 200:
        raise ValidationException("the event type must be 1 to 200 characters")
    for what, value in (("event type", event.type), ("event id", event.id), ("tenant id", event.tenant_id)):
        if value is not None and "\x00" in value:  # Postgres text cannot hold it
            raise ValidationException(f"the {what} contains a NUL character")
    try:
        planned = await plan(db, event)
    except InvalidEvent as exc:
        raise ValidationException(str(exc)) from None
    kept = await inbox.claim(db, event, body, workflow_id=planned.workflow_id if planned else None,
                             outcome="received" if planned else "no_trigger")
    if not kept.fresh:
        return Response(WebhookAnswer(outcome="duplicate", event_type=event.type, workflow_id=kept.workflow_id,
                                      run_id=kept.run_id), status_code=HTTP_200_OK)
    if planned is None:
        if kept.outcome != "no_trigger":  # a delivery taken over whose trigger was turned off since
            await inbox.settle(db, kept.id, "no_trigger")
        return _answer(Fired(outcome="ignored", event_type=event.type))
    try:
        fired = await start(temporal, event, planned)
    except Exception:
        try:
            await inbox.settle(db, kept.id, "failed")  # the sender's retry takes it over
        except Exception:  # noqa: BLE001 - the first error is the one to answer; a minute later it is taken over anyway
            log.warning("webhook inbox: delivery %d could not be marked failed", kept.id)
        raise
    await inbox.settle(db, kept.id, fired.outcome, workflow_id=fired.workflow_id, run_id=fired.run_id)
    return _answer(fired)


@post(
    "/webhooks/{source:str}",
    operation_id="receive_webhook",
    tags=["triggers"],
    summary="Receive a signed webhook",
    description="Public: the sender's signature is the authentication (stripe, shopify, lago, generic). Every "
    "accepted event is kept in the inbox first. 202 when the event's workflow was started or the event has no "
    "trigger (kept, nothing started); 200 for a replay of a delivery (same event id or body: nothing started) or "
    "when its workflow exists already; 401 for a missing, forged or stale signature, or a delivery older than the "
    "replay window; 404 for an unknown source.",
    status_code=HTTP_202_ACCEPTED,
    request_max_body_size=MAX_BODY_BYTES,
    security=[],
    # Read raw (the signature covers the bytes), with the app's client and pool read from its
    # state (503 when Temporal or Postgres is down): its errors are declared here.
    raises=[ValidationException, NotAuthorizedException, NotFoundException, BodyTooLarge, ServiceUnavailableException],
    responses={HTTP_200_OK: ResponseSpec(WebhookAnswer, description="Its workflow exists already (a redelivery)")},
)
async def receive_webhook(source: Annotated[str, PathParameter(max_length=32)],
                          request: Request) -> Response[WebhookAnswer]:
    verify = VERIFIERS.get(source)
    if verify is None:
        raise NotFoundException(f"unknown webhook source {source!r}")
    body = await request.body()
    # The app's client and pool, read from its state rather than injected: Litestar resolves two
    # dependencies in a task group of their own, two tasks per delivery on the busiest public route.
    state = request.app.state
    settings, temporal, db = state.settings, state.temporal, state.db
    try:
        event = await verify(request, body, settings, db)
        _check_age(event, settings)
    except Unsigned as exc:
        log.warning("webhook %s refused (401): %s; from %s", source, exc, request.client.host if request.client else "?")
        raise NotAuthorizedException("webhook delivery older than the replay window" if isinstance(exc, TooOld)
                                     else "invalid webhook signature") from None
    return await _fire(temporal, db, event, body)


@post(
    "/events",
    operation_id="receive_platform_event",
    tags=["triggers"],
    summary="Receive an internal platform event",
    description="For platform services, with a bearer token of role super_admin. Goes through the trigger table: "
    "tenant.created starts onboarding. 202 started or acknowledged without a trigger, 200 its workflow exists.",
    status_code=HTTP_202_ACCEPTED,
    opt={"roles": frozenset({"super_admin"})},
    responses={HTTP_200_OK: ResponseSpec(WebhookAnswer, description="Its workflow exists already (a redelivery)")},
)
async def receive_platform_event(data: JSONBody[PlatformEvent], request: Request, temporal: NamedDependency[Client],
                                 db: NamedDependency[asyncpg.Pool]) -> Response[WebhookAnswer]:
    event = Event(source="platform", type=data.type, id=data.id, tenant_id=None, payload=data.data,
                  sender=f"event:{request.user.sub}")
    return await _fire(temporal, db, event, await request.body())


def webhooks_router() -> Router:
    return Router(path="/v1", route_handlers=[receive_webhook, receive_platform_event])
