"""Side effects of the approval protocol: notifications (reminders, escalations, timeouts) and
the campaign policy a tenant sets. Decisions themselves go to the audit log through
``audit.write`` (activities/tenants.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec
from temporalio import activity

from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB

# A tenant without its own cap: campaigns above this budget also need an admin's approval.
DEFAULT_CAMPAIGN_BUDGET_CAP_USD = Decimal("1000")


class Notify(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str  # workflow id + request id + event (+ round)
    tenant_id: str
    workflow_id: str
    request_id: str
    event: str  # reminder | escalated | timed_out
    audience: str
    roles: list[str]
    title: str
    due_at: datetime | None = None


class Notified(msgspec.Struct, frozen=True, kw_only=True):
    notification_id: int
    created: bool


class TenantPolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str


class TenantPolicy(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    campaign_budget_cap_usd: float


class ApprovalActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        async with self._pool.acquire() as conn:
            row_id = await conn.fetchval(
                """INSERT INTO approval_notifications
                       (idempotency_key, tenant_id, workflow_id, request_id, event, audience, roles, title, due_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
                n.idempotency_key, n.tenant_id, n.workflow_id, n.request_id, n.event, n.audience, n.roles,
                n.title, n.due_at,
            )
            if row_id is not None:
                return Notified(notification_id=row_id, created=True)
            row_id = await conn.fetchval(
                "SELECT id FROM approval_notifications WHERE idempotency_key = $1", n.idempotency_key)
            return Notified(notification_id=row_id, created=False)

    @activity.defn(name="tenant.policy")
    async def tenant_policy(self, req: TenantPolicyRequest) -> TenantPolicy:
        cap = await self._pool.fetchval(
            "SELECT (settings->>'campaign_budget_cap_usd')::numeric FROM tenants WHERE id = $1", req.tenant_id)
        return TenantPolicy(tenant_id=req.tenant_id,
                            campaign_budget_cap_usd=float(cap if cap is not None else DEFAULT_CAMPAIGN_BUDGET_CAP_USD))
