"""Side effects of the approval protocol: the record of each approval event (requested,
reminder, escalated, decided, timed_out; delivered by ``notifications.deliver``, activities/notify.py) and
the campaign policy a tenant sets (the campaign capability's settings, ``CampaignSettings``).
Decisions themselves go to the audit log through ``audit.write`` (activities/tenants.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from temporalio import activity

from activities.tenants import SettingsOf
from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB


class Notify(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str  # workflow id + request id + event (+ round)
    tenant_id: str
    workflow_id: str
    request_id: str
    event: str  # requested | reminder | escalated | decided | timed_out
    audience: str
    roles: list[str]
    title: str
    due_at: datetime | None = None
    outcome: str | None = None  # decided, timed_out: the approval's outcome
    decided_by: str | None = None  # decided: who closed it


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

    def __init__(self, pool: asyncpg.Pool, campaign_settings: SettingsOf[Any] | None = None) -> None:
        """``campaign_settings``: the campaign capability's (``CAPABILITY.settings_of`` of
        workflows/campaign.py), needed by ``tenant.policy`` only."""
        self._pool = pool
        self._campaign = campaign_settings

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        async with self._pool.acquire() as conn:
            row_id = await conn.fetchval(
                """INSERT INTO approval_notifications
                       (idempotency_key, tenant_id, workflow_id, request_id, event, audience, roles, title, due_at,
                        outcome, decided_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                   ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
                n.idempotency_key, n.tenant_id, n.workflow_id, n.request_id, n.event, n.audience, n.roles,
                n.title, n.due_at, n.outcome, n.decided_by,
            )
            if row_id is not None:
                return Notified(notification_id=row_id, created=True)
            row_id = await conn.fetchval(
                "SELECT id FROM approval_notifications WHERE idempotency_key = $1", n.idempotency_key)
            return Notified(notification_id=row_id, created=False)

    @activity.defn(name="tenant.policy")
    async def tenant_policy(self, req: TenantPolicyRequest) -> TenantPolicy:
        if self._campaign is None:
            raise RuntimeError("ApprovalActivities was built without the campaign settings")
        s = await self._campaign.read(self._pool, req.tenant_id)
        return TenantPolicy(tenant_id=req.tenant_id, campaign_budget_cap_usd=float(s.budget_cap_usd))
