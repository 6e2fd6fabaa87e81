"""GET /v1/outbox: the outside effects recorded for a tenant (what would have been sent).

The sandbox MCP server writes one row per effect (email, WhatsApp, SMS, social post, ads
campaign, WordPress, CRM); this lists them newest first, scoped like everything else: clients
see their tenant, partners the tenants they manage, platform staff any tenant. A tenant out of
scope reads as 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Router, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from api.auth import Principal
from core.names import MAX_ROW_ID, SLUG_PATTERN

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_ID = MAX_ROW_ID
TOOL_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"  # an MCP tool's name


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: str
    tool: str
    idempotency_key: str
    workflow_id: str | None
    arguments: dict[str, Any]
    response: dict[str, Any]
    created_at: datetime


class OutboxPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[OutboxItem]
    # Pass as ?before_id= for the next (older) page; null on the last page.
    next_before_id: int | None = None


def _tenant_scope(principal: Principal, tenant_id: str | None) -> list[str] | None:
    """The tenants to list (None: every tenant, for platform staff)."""
    if tenant_id is not None:
        if not principal.can_see_tenant(tenant_id):
            raise NotFoundException(f"tenant {tenant_id!r} not found")
        return [tenant_id]
    if principal.is_platform:
        return None
    return sorted({t for t in (principal.tenant_id, *principal.tenants) if t})


class OutboxController(Controller):
    path = "/v1/outbox"
    tags = ["outbox"]

    @get(
        "/",
        operation_id="list_outbox",
        summary="Outside effects recorded for a tenant, newest first",
        description=(
            "Clients see their own tenant; partners the tenants they manage; platform staff every "
            "tenant, or one with `tenant_id`. A tenant out of scope answers 404. Page with "
            "`before_id` = the previous page's `next_before_id`."
        ),
        raises=[NotFoundException],
    )
    async def list_outbox(
        self,
        request: Request[Principal, Any, Any],
        db: NamedDependency[asyncpg.Pool],
        tenant_id: Annotated[str | None, Parameter(pattern=SLUG_PATTERN, description="Defaults to the caller's tenants")] = None,
        tool: Annotated[str | None, Parameter(pattern=TOOL_PATTERN, description="Only this tool's effects")] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        before_id: Annotated[int | None, Parameter(ge=1, le=MAX_ID, description="Only rows older than this id")] = None,
    ) -> OutboxPage:
        tenants = _tenant_scope(request.user, tenant_id)
        if tenants == []:
            return OutboxPage(items=[])
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("tenant_id = ANY(${})", tenants), ("tool = ${}", tool), ("id < ${}", before_id)):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        args.append(limit + 1)
        rows = await db.fetch(
            f"""SELECT id, tenant_id, tool, idempotency_key, workflow_id, arguments, response, created_at
                FROM outbox {"WHERE " + " AND ".join(where) if where else ""}
                ORDER BY id DESC LIMIT ${len(args)}""",  # noqa: S608 - clauses are constants, values bound
            *args,
        )
        items = [OutboxItem(**dict(r)) for r in rows[:limit]]
        return OutboxPage(items=items, next_before_id=items[-1].id if len(rows) > limit else None)


def outbox_router() -> Router:
    return Router(path="/", route_handlers=[OutboxController])
