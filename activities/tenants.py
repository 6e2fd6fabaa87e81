"""Tenant rows and the audit log: the light Postgres activities of the workflows queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB


class CreateTenant(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    name: str
    plan: str
    owner_email: str
    timezone: str = "UTC"
    workflow_id: str | None = None


class TenantRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    name: str
    plan: str
    status: str
    created_at: datetime
    # False when the row already existed (a retried activity or a second onboarding).
    created: bool


class SetTenantStatus(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    status: Annotated[str, msgspec.Meta(pattern="^(onboarding|active|suspended|closed)$")]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str
    tenant_id: str
    actor: str
    action: str
    workflow_id: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class AuditReceipt(msgspec.Struct, frozen=True, kw_only=True):
    audit_id: int
    written: bool  # False: the same idempotency key was written before


class TenantActivities(Activities):
    """Holds the pool; the worker registers the bound methods."""
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB


    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="tenant.create")
    async def create_tenant(self, req: CreateTenant) -> TenantRecord:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """INSERT INTO tenants (id, name, plan, owner_email, timezone, created_by_workflow)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (id) DO NOTHING
                   RETURNING id, name, plan, status, created_at""",
                req.tenant_id, req.name, req.plan, req.owner_email, req.timezone, req.workflow_id,
            )
            created = row is not None
            if row is None:
                row = await conn.fetchrow(
                    "SELECT id, name, plan, status, created_at, created_by_workflow FROM tenants WHERE id = $1",
                    req.tenant_id,
                )
                if row["created_by_workflow"] != req.workflow_id:
                    # Created by someone else: a second onboarding must not take it over.
                    raise ApplicationError(
                        f"tenant {req.tenant_id!r} already exists",
                        type="TenantAlreadyExists",
                        non_retryable=True,
                    )
        return TenantRecord(
            tenant_id=row["id"], name=row["name"], plan=row["plan"], status=row["status"],
            created_at=row["created_at"], created=created,
        )

    @activity.defn(name="tenant.set_status")
    async def set_status(self, req: SetTenantStatus) -> TenantRecord:
        row = await self._pool.fetchrow(
            """UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1
               RETURNING id, name, plan, status, created_at""",
            req.tenant_id, req.status,
        )
        if row is None:
            raise ApplicationError(f"tenant {req.tenant_id!r} not found", type="TenantNotFound", non_retryable=True)
        return TenantRecord(
            tenant_id=row["id"], name=row["name"], plan=row["plan"], status=row["status"],
            created_at=row["created_at"], created=False,
        )


class AuditActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="audit.write")
    async def write(self, entry: AuditEntry) -> AuditReceipt:
        async with self._pool.acquire() as conn:
            audit_id = await conn.fetchval(
                """INSERT INTO audit_log (idempotency_key, tenant_id, actor, action, workflow_id, details)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (idempotency_key) DO NOTHING
                   RETURNING id""",
                entry.idempotency_key, entry.tenant_id, entry.actor, entry.action,
                entry.workflow_id, msgspec.to_builtins(entry.details),
            )
            if audit_id is not None:
                return AuditReceipt(audit_id=audit_id, written=True)
            audit_id = await conn.fetchval(
                "SELECT id FROM audit_log WHERE idempotency_key = $1", entry.idempotency_key
            )
            return AuditReceipt(audit_id=audit_id, written=False)
