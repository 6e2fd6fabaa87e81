"""Tenant rows, their per-capability settings and the audit log: the light Postgres activities
of the workflows queue.

Per-tenant settings are read one way, :func:`tenant_settings`: the tenant's row of
``tenant_settings`` for the capability, decoded into the capability's settings Struct with the
declared defaults filled in (a tenant that set nothing gets the defaults). They are written only
by the TenantSettings workflow (``tenant.put_settings``), which the settings API starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

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


S = TypeVar("S", bound=msgspec.Struct)


class InvalidSettings(ValueError):
    """A stored settings row does not match the capability's settings Struct."""


def decode_settings(stored: dict[str, Any] | None, settings_type: type[S]) -> S:
    """Stored settings (only what the tenant changed) as the typed settings, defaults filled in.
    Keys the Struct no longer has are left aside (a field removed from a capability)."""
    known = settings_type.__struct_fields__
    try:
        return msgspec.convert({k: v for k, v in (stored or {}).items() if k in known}, settings_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidSettings(str(exc)) from None


async def stored_settings(conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str,
                          capability: str) -> dict[str, Any] | None:
    """What the tenant set for the capability ({} when nothing); None when there is no such tenant."""
    row = await conn.fetchrow(
        """SELECT t.id, s.settings FROM tenants t
           LEFT JOIN tenant_settings s ON s.tenant_id = t.id AND s.capability = $2
           WHERE t.id = $1""", tenant_id, capability)
    if row is None:
        return None
    return row["settings"] or {}


async def tenant_settings(pool: asyncpg.Pool | asyncpg.Connection, tenant_id: str, capability: str,
                          settings_type: type[S]) -> S:
    """The tenant's settings of one capability, typed, with the declared defaults (an unknown
    tenant gets the defaults too). :class:`InvalidSettings` when the stored row does not decode."""
    return decode_settings(await stored_settings(pool, tenant_id, capability), settings_type)


@dataclass(frozen=True)
class SettingsOf(Generic[S]):
    """One capability's settings (its name and Struct), handed to the activities that apply them
    by the worker (``Capability.settings_of``): activities never import a workflow module."""

    capability: str
    type: type[S]

    async def read(self, pool: asyncpg.Pool | asyncpg.Connection, tenant_id: str) -> S:
        """From an activity: a stored row that does not decode fails the activity for good."""
        try:
            return await tenant_settings(pool, tenant_id, self.capability, self.type)
        except InvalidSettings as exc:
            raise ApplicationError(f"tenant {tenant_id!r}: {self.capability} settings: {exc}",
                                   type="InvalidSettings", non_retryable=True) from None


class PutSettings(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    # Only the values that differ from the declared defaults (validated by the API).
    settings: dict[str, Any]
    updated_by: str = "system"
    workflow_id: str | None = None


class SettingsWritten(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    before: dict[str, Any]
    after: dict[str, Any]


class CapabilitySettingsRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str


class CapabilitySettings(msgspec.Struct, frozen=True, kw_only=True):
    capability: str = ""
    # The tenant's settings of the capability, every field (the declared defaults for what it
    # never set), as plain values: the workflow converts them into its settings Struct.
    settings: dict[str, Any]


class HealthSignalsRequest(msgspec.Struct, frozen=True, kw_only=True):
    as_of: datetime  # the end of the window (the calling workflow's time)
    window_hours: int
    tenant_ids: list[str] | None = None  # None: every tenant that is not closed


class TenantSignals(msgspec.Struct, frozen=True, kw_only=True):
    """What the platform knows of one tenant's last hours, from its own rows."""

    tenant_id: str
    status: str
    approvals_escalated: int = 0  # approval requests escalated in the window
    approvals_timed_out: int = 0  # approval requests nobody decided in time
    orders: int = 0
    orders_failed: int = 0  # failed or invalid (not a merchant's rejection)
    webhooks_failed: int = 0  # deliveries the platform could not handle
    ai_spend_month_usd: Decimal = Decimal(0)  # this calendar month (UTC)
    ai_budget_usd: Decimal | None = None  # the tenant's own monthly budget, when it has one


class HealthSignals(msgspec.Struct, frozen=True, kw_only=True):
    tenants: list[TenantSignals]


class TenantActivities(Activities):
    """Holds the pool, and the settings Struct of each capability (``Capability.settings_of``, by
    name, given by the worker); the worker registers the bound methods."""
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool, settings: Mapping[str, SettingsOf[Any]] | None = None) -> None:
        self._pool = pool
        self._settings = dict(settings or {})

    @activity.defn(name="tenant.capability_settings")
    async def capability_settings(self, req: CapabilitySettingsRequest) -> CapabilitySettings:
        """A tenant's settings of a capability, read as every reader does (:func:`tenant_settings`):
        for a workflow whose input leaves them to the tenant (a scheduled run)."""
        of = self._settings.get(req.capability)
        if of is None:
            raise ApplicationError(f"no settings of capability {req.capability!r} on this worker",
                                   type="UnknownCapability", non_retryable=True)
        return CapabilitySettings(capability=req.capability,
                                  settings=msgspec.to_builtins(await of.read(self._pool, req.tenant_id)))

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

    @activity.defn(name="tenant.put_settings")
    async def put_settings(self, req: PutSettings) -> SettingsWritten:
        """Replace the tenant's settings of one capability; answers what they were and are."""
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                "SELECT settings FROM tenant_settings WHERE tenant_id = $1 AND capability = $2 FOR UPDATE",
                req.tenant_id, req.capability)
            try:
                await conn.execute(
                    """INSERT INTO tenant_settings (tenant_id, capability, settings, updated_by, workflow_id)
                       VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT (tenant_id, capability) DO UPDATE SET
                           settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by,
                           workflow_id = EXCLUDED.workflow_id, updated_at = now()""",
                    req.tenant_id, req.capability, req.settings, req.updated_by, req.workflow_id)
            except asyncpg.ForeignKeyViolationError:
                raise ApplicationError(f"tenant {req.tenant_id!r} not found", type="TenantNotFound",
                                       non_retryable=True) from None
            except asyncpg.UniqueViolationError as exc:
                # A value only one tenant may hold (a Shopify shop domain).
                raise ApplicationError(f"a setting of {req.capability} is held by another tenant "
                                       f"({exc.constraint_name})", type="SettingTaken", non_retryable=True) from None
        return SettingsWritten(tenant_id=req.tenant_id, capability=req.capability, before=before or {},
                               after=req.settings)

    @activity.defn(name="tenant.health_signals")
    async def health_signals(self, req: HealthSignalsRequest) -> HealthSignals:
        """Each tenant's signals over ``window_hours`` before ``as_of``, one query (read only)."""
        since = req.as_of - timedelta(hours=req.window_hours)
        month = req.as_of.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        rows = await self._pool.fetch(
            """SELECT t.id, t.status,
                      (SELECT count(*) FROM approval_notifications n WHERE n.tenant_id = t.id
                          AND n.event = 'escalated' AND n.created_at > $1 AND n.created_at <= $2) AS escalated,
                      (SELECT count(*) FROM approval_notifications n WHERE n.tenant_id = t.id
                          AND n.event = 'timed_out' AND n.created_at > $1 AND n.created_at <= $2) AS timed_out,
                      (SELECT count(*) FROM orders o WHERE o.tenant_id = t.id
                          AND o.created_at > $1 AND o.created_at <= $2) AS orders,
                      (SELECT count(*) FROM orders o WHERE o.tenant_id = t.id AND o.status IN ('failed', 'invalid')
                          AND o.created_at > $1 AND o.created_at <= $2) AS orders_failed,
                      (SELECT count(*) FROM webhook_inbox w WHERE w.tenant_id = t.id AND w.outcome = 'failed'
                          AND w.received_at > $1 AND w.received_at <= $2) AS webhooks_failed,
                      (SELECT coalesce(sum(u.cost_usd), 0) FROM llm_usage u WHERE u.tenant_id = t.id
                          AND u.created_at >= $3 AND u.created_at <= $2) AS spend,
                      b.monthly_ai_budget_usd AS budget
               FROM tenants t LEFT JOIN tenant_budgets b ON b.tenant_id = t.id
               WHERE t.status <> 'closed' AND ($4::text[] IS NULL OR t.id = ANY($4))
               ORDER BY t.id""",
            since, req.as_of, month, req.tenant_ids,
        )
        return HealthSignals(tenants=[
            TenantSignals(
                tenant_id=r["id"], status=r["status"], approvals_escalated=r["escalated"],
                approvals_timed_out=r["timed_out"], orders=r["orders"], orders_failed=r["orders_failed"],
                webhooks_failed=r["webhooks_failed"], ai_spend_month_usd=r["spend"], ai_budget_usd=r["budget"],
            )
            for r in rows
        ])


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
