"""GET /v1/audit-log: every decision and state change the platform recorded, listed with filters
and exported as CSV or JSON.

The audit log is append-only and the database enforces it (core/migrations/0070: a trigger
refuses UPDATE, DELETE and TRUNCATE). Clients read their tenant's entries, partners those of the
tenants they manage, platform staff every tenant's (and the platform's own). A tenant out of
scope is a 404.

Exports are streamed oldest first in batches of :data:`EXPORT_BATCH` rows (keyset on the id, no
connection held between batches), so an export of millions of rows needs no more memory than
one batch.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Router, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from api.auth import Principal
from api.paging import (DEFAULT_LIMIT, NAME_PATTERN, TEXT_PATTERN, Cursor, Limit, Since, Tenant, Until, Where,
                        encode_cursor, last_id, listing, period, tenant_scope)

EXPORT_BATCH = 1000
ALL_TIME = timedelta(days=36600)
CSV_COLUMNS = ("id", "created_at", "tenant_id", "actor", "action", "workflow_id", "idempotency_key", "details")


async def write_entry(conn: asyncpg.Connection | asyncpg.Pool, *, subject: str, tenant_id: str,
                      actor: str | Principal, action: str, details: dict[str, Any],
                      workflow_id: str | None = None) -> int:
    """An entry for a change the API makes itself (a registry row, an endpoint, a connection, a
    control sent to a workflow); workflows write theirs through ``audit.write``. The key is
    ``api:{subject}:{random}`` (each request one entry); a principal acting for another adds
    ``acting_as``. Its id."""
    if isinstance(actor, Principal):
        details = {**details, **({"acting_as": actor.acting_as} if actor.acting_as else {})}
        actor = actor.sub
    return await conn.fetchval(
        """INSERT INTO audit_log (idempotency_key, tenant_id, actor, action, workflow_id, details)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        f"api:{subject}:{secrets.token_hex(8)}", tenant_id, actor, action, workflow_id, details)


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    created_at: datetime
    tenant_id: str
    actor: str  # who: a person's sub, or the system part that acted
    action: str  # e.g. approval.decided, tenant.onboarded, mcp.server_registered
    workflow_id: str | None
    idempotency_key: str
    details: dict[str, Any]


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AuditEntry]
    next_cursor: str | None = None  # pass as ?cursor= for the next (older) page


_COLUMNS = "id, created_at, tenant_id, actor, action, workflow_id, idempotency_key, details"

Actor = Annotated[str | None, Parameter(pattern=TEXT_PATTERN, description="Only entries by this actor (exact)")]
Action = Annotated[str | None, Parameter(pattern=NAME_PATTERN, description="Only this action (exact)")]
ActionPrefix = Annotated[str | None, Parameter(
    pattern=NAME_PATTERN, description="Only actions beginning with this (e.g. `approval.`)")]
WorkflowId = Annotated[str | None, Parameter(pattern=TEXT_PATTERN, description="Only entries of this workflow")]


def _where(tenants: list[str] | None, actor: str | None, action: str | None, action_prefix: str | None,
           workflow_id: str | None, start: datetime | None, end: datetime | None) -> Where:
    where = Where()
    where.add("tenant_id = ANY({})", tenants)
    where.add("actor = {}", actor)
    where.add("action = {}", action)
    if action_prefix is not None:
        # A prefix match without LIKE's wildcards: the prefix is compared as text.
        where.add("left(action, char_length({0})) = {0}", action_prefix)
    where.add("workflow_id = {}", workflow_id)
    where.add("created_at >= {}", start)
    where.add("created_at < {}", end)
    return where


def _entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(**dict(row))


def _period(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    if since is None and until is None:
        return None, None
    return period(since, until, default=ALL_TIME)


async def _batches(db: asyncpg.Pool, where: Where) -> AsyncIterator[list[AuditEntry]]:
    after = 0
    while True:
        batch = Where()
        batch.clauses, batch.args = list(where.clauses), list(where.args)
        batch.add("id > {}", after)
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM audit_log {batch.sql()} ORDER BY id LIMIT {batch.bind(EXPORT_BATCH)}",  # noqa: S608
            *batch.args)
        if not rows:
            return
        yield [_entry(r) for r in rows]
        if len(rows) < EXPORT_BATCH:
            return
        after = rows[-1]["id"]


async def _csv(db: asyncpg.Pool, where: Where) -> AsyncIterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue().encode()
    async for batch in _batches(db, where):
        out.seek(0)
        out.truncate()
        for e in batch:
            writer.writerow([e.id, e.created_at.isoformat(), e.tenant_id, e.actor, e.action, e.workflow_id or "",
                             e.idempotency_key, msgspec.json.encode(e.details).decode()])
        yield out.getvalue().encode()


async def _json(db: asyncpg.Pool, where: Where) -> AsyncIterator[bytes]:
    yield b"["
    first = True
    async for batch in _batches(db, where):
        chunk = b",".join(msgspec.json.encode(e) for e in batch)
        yield chunk if first else b"," + chunk
        first = False
    yield b"]"


def _empty_where() -> Where:
    where = Where()
    where.clauses.append("false")
    return where


class AuditController(Controller):
    path = "/v1/audit-log"
    tags = ["audit log"]

    @get("/", operation_id="list_audit_log", summary="Audit entries, newest first",
         description="Filters: `actor`, `action` or `action_prefix`, `workflow_id`, and the period "
                     "`since`/`until` (default: all time). Clients see their tenant's entries, partners their "
                     "tenants', platform staff every tenant's.",
         raises=[NotFoundException])
    async def list_entries(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                           cursor_key: NamedDependency[bytes], tenant_id: Tenant = None, actor: Actor = None,
                           action: Action = None, action_prefix: ActionPrefix = None, workflow_id: WorkflowId = None,
                           since: Since = None, until: Until = None,
                           limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> AuditPage:
        tenants = tenant_scope(request.user, tenant_id)
        if tenants == []:
            return AuditPage(items=[])
        start, end = _period(since, until)
        where = _where(tenants, actor, action, action_prefix, workflow_id, start, end)
        name = listing("audit", request.user, tenants, actor=actor, action=action, action_prefix=action_prefix,
                       workflow_id=workflow_id, since=since, until=until)
        where.add("id < {}", last_id(cursor, cursor_key, name))
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM audit_log {where.sql()} ORDER BY id DESC LIMIT {where.bind(limit + 1)}",  # noqa: S608
            *where.args)
        items = [_entry(r) for r in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items=items, next_cursor=encode_cursor([items[-1].id], cursor_key, name) if more else None)

    @get("/export.csv", operation_id="export_audit_log_csv", media_type="text/csv",
         summary="The audit entries matching the filters as CSV, oldest first (streamed)",
         description="Columns: " + ", ".join(CSV_COLUMNS) + " (details as JSON text). The same filters and scope "
                     "as the listing; no paging: the whole selection is streamed.",
         raises=[NotFoundException],
         responses={200: ResponseSpec(data_container=str, media_type="text/csv", generate_examples=False,
                                      description="CSV with a header row")})
    async def export_csv(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                         tenant_id: Tenant = None, actor: Actor = None, action: Action = None,
                         action_prefix: ActionPrefix = None, workflow_id: WorkflowId = None,
                         since: Since = None, until: Until = None) -> Stream:
        where = self._export_where(request.user, tenant_id, actor, action, action_prefix, workflow_id, since, until)
        return Stream(_csv(db, where), media_type="text/csv; charset=utf-8",
                      headers={"content-disposition": 'attachment; filename="audit-log.csv"'})

    @get("/export.json", operation_id="export_audit_log_json", media_type="application/json",
         summary="The audit entries matching the filters as a JSON array, oldest first (streamed)",
         description="The same filters and scope as the listing; no paging: the whole selection is streamed.",
         raises=[NotFoundException],
         responses={200: ResponseSpec(data_container=list[AuditEntry], generate_examples=False,
                                      description="A JSON array of audit entries")})
    async def export_json(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                          tenant_id: Tenant = None, actor: Actor = None, action: Action = None,
                          action_prefix: ActionPrefix = None, workflow_id: WorkflowId = None,
                          since: Since = None, until: Until = None) -> Stream:
        where = self._export_where(request.user, tenant_id, actor, action, action_prefix, workflow_id, since, until)
        return Stream(_json(db, where), media_type="application/json",
                      headers={"content-disposition": 'attachment; filename="audit-log.json"'})

    @staticmethod
    def _export_where(principal: Principal, tenant_id: str | None, actor: str | None, action: str | None,
                      action_prefix: str | None, workflow_id: str | None, since: str | None,
                      until: str | None) -> Where:
        tenants = tenant_scope(principal, tenant_id)
        if tenants == []:
            return _empty_where()
        start, end = _period(since, until)
        return _where(tenants, actor, action, action_prefix, workflow_id, start, end)


def audit_router() -> Router:
    return Router(path="/", route_handlers=[AuditController])
