"""Outbound webhooks and notifications over HTTP, per tenant.

- ``POST /v1/tenants/{t}/webhook-endpoints``: register an endpoint (URL, event types, enabled).
  The answer carries the signing secret (``whsec_...``) this once; no later answer shows it.
- ``GET /v1/tenants/{t}/webhook-endpoints`` and ``.../{id}``: the endpoints, without secrets.
- ``PATCH /v1/tenants/{t}/webhook-endpoints/{id}``: change its URL, description, event types or
  switch it off and on.
- ``DELETE /v1/tenants/{t}/webhook-endpoints/{id}``: no more deliveries to it (its log stays).
- ``POST /v1/tenants/{t}/webhook-endpoints/{id}/rotate-secret``: a new secret, shown once; the
  previous one keeps signing beside it (two signatures) for ``BIZ_OUTBOUND_ROTATION_OVERLAP_HOURS``.
- ``GET /v1/tenants/{t}/webhook-deliveries``: one row per delivery attempt, newest first,
  filtered by endpoint, status, event type, event id and period.
- ``GET /v1/tenants/{t}/notifications``: the approval notifications (reminders, escalations,
  timeouts...) of the tenant, newest first, filtered by event, workflow and period.

Endpoint URLs go through the SSRF guard (activities/netguard.py, ``BIZ_OUTBOUND_*``): http(s),
no credentials, and no loopback, private, link-local or reserved literal unless the policy opens
it; a host name is checked again at every delivery, after resolving. Lists are cursor-paged: the
cursor is signed for the listing and filters it was issued for. Another tenant's caller gets 404.

The endpoint routes write their rows themselves, in one transaction with their audit entries,
rather than through a workflow: an endpoint is the tenant's configuration (like the MCP registry,
api/mcp.py), nothing outside Postgres changes, and the delivery activity reads it at each attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, Router, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, Parameter, PathParameter
from litestar.status_codes import HTTP_201_CREATED

from activities import netguard
from activities.outbound_webhooks import (
    ENDPOINT_ID_PREFIX,
    EVENT_ID_PATTERN,
    EVENT_TYPE_PATTERN,
    check_endpoint_url,
    fetch_policy,
    new_endpoint_id,
    new_secret,
)
from api.audit import write_entry
from api.auth import ADMIN_ROLES, ROLES, Principal
from api.errors import ConflictError, invalid
from api.paging import Where, encode_cursor, last_id, listing, parse_time, time_filter
from api.visibility import CURSOR_PATTERN
from core.names import PLATFORM_TENANT, SLUG_PATTERN, WEB_URL_PATTERN
from core.settings import Settings

READ_ROLES = frozenset(ROLES)
# Tenant admins (the tenant's own client, its partner) and platform admins.
WRITE_ROLES = ADMIN_ROLES | {"partner", "client"}
MAX_ENDPOINTS = 20
MAX_EVENT_TYPES = 50
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
ENDPOINT_ID_PATTERN = rf"^{ENDPOINT_ID_PREFIX}[0-9a-f]{{24}}$"
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,400}$"
NOTIFICATION_EVENT_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_ENDPOINT_ID = Annotated[str, PathParameter(pattern=ENDPOINT_ID_PATTERN, description="The endpoint's id (we_...)")]
_LIMIT = Annotated[int, Parameter(ge=1, le=MAX_LIMIT)]
_CURSOR = Annotated[str | None, Parameter(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")]
_SINCE = time_filter("Only rows created at or after this time (RFC 3339, e.g. 2026-11-26T09:30:00Z)")
_UNTIL = time_filter("Only rows created before this time (RFC 3339)")


class EndpointBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=WEB_URL_PATTERN,
                                     description="http(s) URL the events are POSTed to")]
    description: Annotated[str, msgspec.Meta(max_length=500, pattern=_PRINTABLE)] = ""
    # Event types delivered (e.g. approval.requested); empty: every event type.
    event_types: Annotated[list[Annotated[str, msgspec.Meta(pattern=EVENT_TYPE_PATTERN)]],
                           msgspec.Meta(max_length=MAX_EVENT_TYPES)] = []
    enabled: bool = True


class EndpointChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to change; a field left out stays as it is."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=WEB_URL_PATTERN)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500, pattern=_PRINTABLE)] | None = None
    event_types: Annotated[list[Annotated[str, msgspec.Meta(pattern=EVENT_TYPE_PATTERN)]],
                           msgspec.Meta(max_length=MAX_EVENT_TYPES)] | None = None
    enabled: bool | None = None


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    created_by: str
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(Endpoint, frozen=True, kw_only=True):
    # The signing secret for standardwebhooks.Webhook(secret).verify: shown this once only.
    secret: str


class EndpointList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Endpoint]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    endpoint_id: str
    url: str
    event_id: str  # the webhook-id header
    event_type: str
    attempt: int
    status: Literal["succeeded", "failed", "refused"]
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: datetime


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Delivery]
    next_cursor: str | None = None  # pass as ?cursor= for the next (older) page


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    # Also the event id (webhook-id) of the webhooks sent for it: filter deliveries by it.
    idempotency_key: str
    workflow_id: str
    request_id: str
    event: str
    audience: str
    roles: list[str]
    title: str
    due_at: datetime | None
    created_at: datetime


class NotificationPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Notification]
    next_cursor: str | None = None


def _in_scope(principal: Principal, tenant_id: str) -> None:
    if not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")


def _endpoint(row: asyncpg.Record) -> Endpoint:
    return Endpoint(id=row["id"], tenant_id=row["tenant_id"], url=row["url"], description=row["description"],
                    event_types=list(row["event_types"]), enabled=row["enabled"], created_by=row["created_by"],
                    created_at=row["created_at"], updated_at=row["updated_at"])


_ENDPOINT_COLUMNS = "id, tenant_id, url, description, event_types, enabled, created_by, created_at, updated_at"


async def _audit(conn: asyncpg.Connection, principal: Principal, tenant_id: str, endpoint_id: str, action: str,
                 details: dict[str, Any]) -> None:
    await write_entry(conn, subject=f"webhook-endpoint:{endpoint_id}:{action}", tenant_id=tenant_id, actor=principal,
                      action=f"webhook_endpoint.{action}", details={"endpoint_id": endpoint_id, **details})


def _period(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """Either end may be open; when both are given, ``since`` comes first (400 naming ``until``)."""
    since, until = parse_time("since", since), parse_time("until", until)
    if since is not None and until is not None and since > until:
        raise invalid("until", "must not be before since")
    return since, until


def _page(rows: list[asyncpg.Record], limit: int, key: bytes, listing_: str) -> str | None:
    """The cursor of the page after ``rows`` (fetched ``limit + 1``), or None on the last page."""
    return encode_cursor([rows[limit - 1]["id"]], key, listing_) if len(rows) > limit else None


class WebhookEndpointsController(Controller):
    path = "/v1/tenants/{tenant_id:str}/webhook-endpoints"
    tags = ["webhooks (outbound)"]

    @post("/", operation_id="create_webhook_endpoint", summary="Register an outbound webhook endpoint",
          description=(
              "The tenant's admins (client, partner) and platform admins. The URL must be http(s), without "
              "credentials, and allowed by the network policy (no loopback, private or link-local address "
              "unless the deployment opens it). The answer's `secret` (whsec_...) signs every delivery "
              "(Standard Webhooks); it is shown this once. Audited."),
          status_code=HTTP_201_CREATED, opt={"roles": WRITE_ROLES}, raises=[NotFoundException, ConflictError])
    async def create(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                     tenant_id: _TENANT_ID, data: JSONBody[EndpointBody]) -> EndpointWithSecret:
        principal: Principal = request.user
        _in_scope(principal, tenant_id)
        settings: Settings = request.app.state.settings
        try:
            url = check_endpoint_url(data.url, fetch_policy(settings.outbound))
        except netguard.URLRefused as exc:
            raise invalid("url", exc.message, "body") from None
        endpoint_id, secret = new_endpoint_id(), new_secret()
        async with db.acquire() as conn, conn.transaction():
            if tenant_id != PLATFORM_TENANT and not await conn.fetchval(
                    "SELECT true FROM tenants WHERE id = $1", tenant_id):
                raise NotFoundException(f"tenant {tenant_id!r} not found")
            # One registration at a time per tenant, so the limit holds.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook-endpoints:' || $1))", tenant_id)
            count = await conn.fetchval("SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1", tenant_id)
            if count >= MAX_ENDPOINTS:
                raise ConflictError(f"tenant {tenant_id!r} has {MAX_ENDPOINTS} endpoints already: delete one first",
                                    code="too_many_endpoints")
            row = await conn.fetchrow(
                f"""INSERT INTO webhook_endpoints (id, tenant_id, url, description, secret, event_types, enabled,
                                                  created_by)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
                endpoint_id, tenant_id, url, data.description, secret, sorted(set(data.event_types)), data.enabled,
                principal.sub)
            await _audit(conn, principal, tenant_id, endpoint_id, "created",
                         {"url": url, "event_types": list(row["event_types"]), "enabled": data.enabled})
        return EndpointWithSecret(**msgspec.structs.asdict(_endpoint(row)), secret=secret)

    @get("/", operation_id="list_webhook_endpoints", summary="A tenant's outbound webhook endpoints",
         description="Without their secrets. Other tenants' callers get 404.",
         opt={"roles": READ_ROLES}, raises=[NotFoundException])
    async def list_endpoints(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                             tenant_id: _TENANT_ID) -> EndpointList:
        _in_scope(request.user, tenant_id)
        rows = await db.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, id",  # noqa: S608
            tenant_id)
        return EndpointList(items=[_endpoint(r) for r in rows])

    @get("/{endpoint_id:str}", operation_id="get_webhook_endpoint", summary="One outbound webhook endpoint",
         description="Without its secret.", opt={"roles": READ_ROLES}, raises=[NotFoundException])
    async def read(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                   tenant_id: _TENANT_ID, endpoint_id: _ENDPOINT_ID) -> Endpoint:
        _in_scope(request.user, tenant_id)
        row = await db.fetchrow(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2",  # noqa: S608
            tenant_id, endpoint_id)
        if row is None:
            raise NotFoundException(f"webhook endpoint {endpoint_id!r} not found")
        return _endpoint(row)

    @patch("/{endpoint_id:str}", operation_id="update_webhook_endpoint",
           summary="Change an outbound webhook endpoint (URL, description, event types, enabled)",
           description="Fields left out stay as they are; the secret does not change (rotate it for that). "
                       "A disabled endpoint gets no deliveries until enabled again. Audited.",
           opt={"roles": WRITE_ROLES}, raises=[NotFoundException])
    async def update(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                     tenant_id: _TENANT_ID, endpoint_id: _ENDPOINT_ID, data: JSONBody[EndpointChange]) -> Endpoint:
        _in_scope(request.user, tenant_id)
        url = None
        if data.url is not None:
            settings: Settings = request.app.state.settings
            try:
                url = check_endpoint_url(data.url, fetch_policy(settings.outbound))
            except netguard.URLRefused as exc:
                raise invalid("url", exc.message, "body") from None
        event_types = sorted(set(data.event_types)) if data.event_types is not None else None
        async with db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE webhook_endpoints
                    SET url = coalesce($3, url), description = coalesce($4, description),
                        event_types = coalesce($5, event_types), enabled = coalesce($6, enabled), updated_at = now()
                    WHERE tenant_id = $1 AND id = $2 RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
                tenant_id, endpoint_id, url, data.description, event_types, data.enabled)
            if row is None:
                raise NotFoundException(f"webhook endpoint {endpoint_id!r} not found")
            change = {k: v for k, v in (("url", url), ("description", data.description),
                                        ("event_types", event_types), ("enabled", data.enabled)) if v is not None}
            await _audit(conn, request.user, tenant_id, endpoint_id, "updated", {"change": change})
        return _endpoint(row)

    @delete("/{endpoint_id:str}", operation_id="delete_webhook_endpoint",
            summary="Delete an outbound webhook endpoint",
            description="No delivery is attempted to it from now on; its delivery log stays. Audited.",
            opt={"roles": WRITE_ROLES}, raises=[NotFoundException])
    async def remove(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                     tenant_id: _TENANT_ID, endpoint_id: _ENDPOINT_ID) -> None:
        _in_scope(request.user, tenant_id)
        async with db.acquire() as conn, conn.transaction():
            url = await conn.fetchval("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2 RETURNING url",
                                      tenant_id, endpoint_id)
            if url is None:
                raise NotFoundException(f"webhook endpoint {endpoint_id!r} not found")
            await _audit(conn, request.user, tenant_id, endpoint_id, "deleted", {"url": url})

    @post("/{endpoint_id:str}/rotate-secret", operation_id="rotate_webhook_endpoint_secret",
          summary="Give an outbound webhook endpoint a new signing secret",
          description=(
              "The new secret is in the answer, this once. Deliveries carry a signature with each of the new "
              "and the previous secret for the rotation overlap (24 hours by default), so the receiver can "
              "switch without losing one. Audited."),
          status_code=HTTP_201_CREATED, opt={"roles": WRITE_ROLES}, raises=[NotFoundException])
    async def rotate(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                     tenant_id: _TENANT_ID, endpoint_id: _ENDPOINT_ID) -> EndpointWithSecret:
        _in_scope(request.user, tenant_id)
        settings: Settings = request.app.state.settings
        overlap = settings.outbound.rotation_overlap_hours
        secret = new_secret()
        async with db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE webhook_endpoints
                    SET previous_secret = CASE WHEN $4 > 0 THEN secret END,
                        previous_secret_until = CASE WHEN $4 > 0 THEN now() + make_interval(hours => $4) END,
                        secret = $3, updated_at = now()
                    WHERE tenant_id = $1 AND id = $2 RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608
                tenant_id, endpoint_id, secret, overlap)
            if row is None:
                raise NotFoundException(f"webhook endpoint {endpoint_id!r} not found")
            await _audit(conn, request.user, tenant_id, endpoint_id, "secret_rotated", {"overlap_hours": overlap})
        return EndpointWithSecret(**msgspec.structs.asdict(_endpoint(row)), secret=secret)


class WebhookDeliveriesController(Controller):
    path = "/v1/tenants/{tenant_id:str}/webhook-deliveries"
    tags = ["webhooks (outbound)"]

    @get("/", operation_id="list_webhook_deliveries", summary="Outbound webhook delivery attempts, newest first",
         description=(
             "One row per attempt: endpoint, event (its `event_id` is the `webhook-id` header, the same on "
             "every retry), attempt number, outcome, HTTP status, error and duration. Page with `cursor` = "
             "the previous page's `next_cursor` (valid for the same filters). Other tenants' callers get 404."),
         opt={"roles": READ_ROLES}, raises=[NotFoundException])
    async def list_deliveries(
        self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
        cursor_key: NamedDependency[bytes], tenant_id: _TENANT_ID,
        endpoint_id: Annotated[str | None, Parameter(pattern=ENDPOINT_ID_PATTERN, description="Only this endpoint's")] = None,
        status: Annotated[Literal["succeeded", "failed", "refused"] | None, Parameter(description="Only this outcome")] = None,
        event_type: Annotated[str | None, Parameter(pattern=EVENT_TYPE_PATTERN, description="Only this event type")] = None,
        event_id: Annotated[str | None, Parameter(pattern=EVENT_ID_PATTERN, description="Only this event (webhook-id)")] = None,
        since: _SINCE = None, until: _UNTIL = None, limit: _LIMIT = DEFAULT_LIMIT, cursor: _CURSOR = None,
    ) -> DeliveryPage:
        _in_scope(request.user, tenant_id)
        since, until = _period(since, until)
        this = listing("webhook-deliveries", request.user, [tenant_id], endpoint_id=endpoint_id, status=status,
                       event_type=event_type, event_id=event_id, since=since, until=until)
        where = Where()
        for clause, value in (("tenant_id = {}", tenant_id), ("endpoint_id = {}", endpoint_id), ("status = {}", status),
                              ("event_type = {}", event_type), ("event_id = {}", event_id),
                              ("created_at >= {}", since), ("created_at < {}", until),
                              ("id < {}", last_id(cursor, cursor_key, this))):
            where.add(clause, value)
        rows = await db.fetch(
            f"""SELECT id, endpoint_id, url, event_id, event_type, attempt, status, status_code, error, duration_ms,
                       created_at
                FROM webhook_deliveries {where.sql()} ORDER BY id DESC LIMIT {where.bind(limit + 1)}""",  # noqa: S608
            *where.args)
        return DeliveryPage(items=[Delivery(**dict(r)) for r in rows[:limit]],
                            next_cursor=_page(rows, limit, cursor_key, this))


class NotificationsController(Controller):
    path = "/v1/tenants/{tenant_id:str}/notifications"
    tags = ["notifications"]

    @get("/", operation_id="list_notifications", summary="A tenant's approval notifications, newest first",
         description=(
             "Reminders, escalations, timeouts and the other approval events written for the tenant. "
             "A notification's `idempotency_key` is the event id of the webhooks sent for it: "
             "`GET .../webhook-deliveries?event_id=` lists them. Page with `cursor`. Other tenants' callers get 404."),
         opt={"roles": READ_ROLES}, raises=[NotFoundException])
    async def list_notifications(
        self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
        cursor_key: NamedDependency[bytes], tenant_id: _TENANT_ID,
        event: Annotated[str | None, Parameter(pattern=NOTIFICATION_EVENT_PATTERN, description="e.g. reminder")] = None,
        workflow_id: Annotated[str | None, Parameter(pattern=WORKFLOW_ID_PATTERN, description="Only this workflow's")] = None,
        audience: Annotated[Literal["client", "admin"] | None, Parameter(description="Only this audience's")] = None,
        since: _SINCE = None, until: _UNTIL = None, limit: _LIMIT = DEFAULT_LIMIT, cursor: _CURSOR = None,
    ) -> NotificationPage:
        _in_scope(request.user, tenant_id)
        since, until = _period(since, until)
        this = listing("notifications", request.user, [tenant_id], event=event, workflow_id=workflow_id,
                       audience=audience, since=since, until=until)
        where = Where()
        for clause, value in (("tenant_id = {}", tenant_id), ("event = {}", event), ("workflow_id = {}", workflow_id),
                              ("audience = {}", audience), ("created_at >= {}", since), ("created_at < {}", until),
                              ("id < {}", last_id(cursor, cursor_key, this))):
            where.add(clause, value)
        rows = await db.fetch(
            f"""SELECT id, idempotency_key, workflow_id, request_id, event, audience, roles, title, due_at, created_at
                FROM approval_notifications {where.sql()} ORDER BY id DESC LIMIT {where.bind(limit + 1)}""",  # noqa: S608
            *where.args)
        items = [Notification(**{**dict(r), "roles": list(r["roles"])}) for r in rows[:limit]]
        return NotificationPage(items=items, next_cursor=_page(rows, limit, cursor_key, this))


def outbound_router() -> Router:
    return Router(path="/", route_handlers=[WebhookEndpointsController, WebhookDeliveriesController,
                                            NotificationsController])
