"""Inbound events: signed webhooks (``POST /v1/webhooks/{source}``, public: the signature is
the authentication) and platform events (``POST /v1/events``, a super_admin bearer token).
Both go through the trigger table (api/triggers.py).

Sources and their signatures:

- ``stripe``: ``Stripe-Signature`` verified by the stripe library with a 5-minute tolerance
  (``BIZ_STRIPE_WEBHOOK_SECRET``); the event type is the event's ``type``, its id ``id``.
- ``shopify``: ``X-Shopify-Hmac-Sha256``, base64 HMAC-SHA256 of the raw body with the app's
  secret (``BIZ_SHOPIFY_WEBHOOK_SECRET``); the type is ``X-Shopify-Topic``, the tenant the one
  whose ``tenants.settings.shopify_shop_domain`` is ``X-Shopify-Shop-Domain``.
- ``lago``: ``X-Lago-Signature``, base64 HMAC-SHA256 of the raw body
  (``X-Lago-Signature-Algorithm: hmac``; ``BIZ_LAGO_WEBHOOK_SECRET``); the type is
  ``webhook_type``, the id ``X-Lago-Unique-Key``.
- ``generic``: per tenant. ``X-Biz-Tenant``, ``X-Biz-Timestamp`` (Unix seconds, 5-minute
  tolerance) and ``X-Biz-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`` with any
  unexpired secret of the tenant (table ``webhook_secrets``: two are valid during a
  rotation). Body ``{"id": ..., "type": ..., "data": {...}}``.

Answers: 202 started (or acknowledged with no trigger: logged, nothing started), 200 the
workflow of this event exists already (redelivery: same ``workflow_id``), 400 a body that is
not the event, 401 a missing, forged or stale signature (logged, never with the secret), 404
an unknown or unconfigured source, 413 a body over ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, Router, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from temporalio.client import Client

from api.bodies import decode_json_body
from api.errors import BodyTooLarge
from api.triggers import Event, Fired, InvalidEvent, fire
from workers.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
TOLERANCE_SECONDS = 300
SOURCES = ("stripe", "shopify", "lago", "generic")
_EVENT_TYPE = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_EVENT_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Unsigned(Exception):
    """A missing, forged or stale signature; the reason is safe to log (no secret in it)."""


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
    return Event(source="stripe", type=event["type"], id=event.get("id"), tenant_id=tenant, payload=event,
                 sender="webhook:stripe")


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
    tenant = await db.fetchval(
        "SELECT id FROM tenants WHERE settings ? 'shopify_shop_domain' "
        "AND lower(settings->>'shopify_shop_domain') = $1 ORDER BY id LIMIT 1", shop
    ) if shop else None
    return Event(source="shopify", type=topic, tenant_id=tenant, payload=payload, sender=f"webhook:shopify:{shop}",
                 id=request.headers.get("x-shopify-event-id") or request.headers.get("x-shopify-webhook-id"))


async def _lago(request: Request, body: bytes, settings: Settings, db: asyncpg.Pool) -> Event:
    secret = _secret(settings.lago.webhook_secret, "lago")
    given = request.headers.get("x-lago-signature")
    if not given:
        raise Unsigned("no X-Lago-Signature header")
    if request.headers.get("x-lago-signature-algorithm", "hmac").lower() != "hmac":
        raise Unsigned("only the hmac signature algorithm is accepted")
    if not _same(_hmac_b64(secret, body), given.strip()):
        raise Unsigned("X-Lago-Signature does not match the body")
    payload = _json(body)
    if not isinstance(payload.get("webhook_type"), str):
        raise ValidationException("the Lago event has no webhook_type")
    return Event(source="lago", type=payload["webhook_type"], id=request.headers.get("x-lago-unique-key"),
                 tenant_id=None, payload=payload, sender="webhook:lago")


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
                 sender=f"webhook:generic:{tenant}")


VERIFIERS = {"stripe": _stripe, "shopify": _shopify, "lago": _lago, "generic": _generic}


def _answer(fired: Fired) -> Response[WebhookAnswer]:
    return Response(
        WebhookAnswer(outcome=fired.outcome, event_type=fired.event_type, workflow_id=fired.workflow_id,
                      run_id=fired.run_id),
        status_code=HTTP_200_OK if fired.outcome == "duplicate" else HTTP_202_ACCEPTED,
    )


async def _fire(temporal: Client, db: asyncpg.Pool, event: Event) -> Response[WebhookAnswer]:
    try:
        return _answer(await fire(temporal, db, event))
    except InvalidEvent as exc:
        raise ValidationException(str(exc)) from None


@post(
    "/webhooks/{source:str}",
    operation_id="receive_webhook",
    tags=["triggers"],
    summary="Receive a signed webhook",
    description="Public: the sender's signature is the authentication (stripe, shopify, lago, generic). 202 when "
    "the event's workflow was started or the event has no trigger (acknowledged, logged); 200 when its workflow "
    "exists already (a redelivery); 401 for a missing, forged or stale signature; 404 for an unknown source.",
    status_code=HTTP_202_ACCEPTED,
    request_max_body_size=MAX_BODY_BYTES,
    security=[],
    # Read raw (the signature covers the bytes): its errors are declared here.
    raises=[ValidationException, NotAuthorizedException, NotFoundException, BodyTooLarge],
    responses={HTTP_200_OK: ResponseSpec(WebhookAnswer, description="Its workflow exists already (a redelivery)")},
)
async def receive_webhook(source: Annotated[str, PathParameter(max_length=32)], request: Request,
                          temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool]) -> Response[WebhookAnswer]:
    verify = VERIFIERS.get(source)
    if verify is None:
        raise NotFoundException(f"unknown webhook source {source!r}")
    body = await request.body()
    try:
        event = await verify(request, body, request.app.state.settings, db)
    except Unsigned as exc:
        log.warning("webhook %s refused (401): %s; from %s", source, exc, request.client.host if request.client else "?")
        raise NotAuthorizedException("invalid webhook signature") from None
    return await _fire(temporal, db, event)


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
    return await _fire(temporal, db, event)


def webhooks_router() -> Router:
    return Router(path="/v1", route_handlers=[receive_webhook, receive_platform_event])
