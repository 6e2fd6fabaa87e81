"""Scheduled capabilities of a tenant: the ``tenant_capabilities`` row and the tenant's
Temporal schedules. Activities of the TenantCapabilities workflow (workflows queue).

The class holds the pool, the queue the scheduled runs go to and the function that applies a
tenant's schedules (``schedules.reconciler.reconcile``, given by the worker: the declarations
it applies live on the floors above); schedules are applied through the worker's own Temporal
client (``activity.client()``) unless one is given. The worker builds it once and registers the
bound methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Literal, Protocol

import asyncpg
import msgspec
from temporalio import activity
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from core.activity import Activities, ActivityPolicy, with_policy
from core.names import WORKFLOWS_QUEUE
from core.policies import DB_TIMEOUT

# Postgres writes and Temporal schedule calls are quick and safe to retry; an unknown tenant is
# not worth retrying.
TENANT_DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10),
                              non_retryable_error_types=["TenantNotFound"])
TENANT_DB = ActivityPolicy(start_to_close=DB_TIMEOUT, retry=TENANT_DB_RETRY)
SCHEDULES = ActivityPolicy(
    start_to_close=timedelta(seconds=60),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=30)))


Change = Literal["create", "update", "delete", "unchanged", "skipped"]
CHANGES: tuple[Change, ...] = ("create", "update", "delete", "unchanged", "skipped")


class ScheduleChange(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str
    change: Change
    tenant_id: str | None = None
    capability: str | None = None
    detail: str = ""


class SyncReport(msgspec.Struct, frozen=True, kw_only=True):
    dry_run: bool
    changes: list[ScheduleChange]

    def of(self, schedule_id_: str) -> Change | None:
        return next((c.change for c in self.changes if c.schedule_id == schedule_id_), None)

    def summary(self) -> str:
        counts = ", ".join(f"{sum(c.change == k for c in self.changes)} {k}" for k in CHANGES)
        return f"{counts}{' (dry run: nothing applied)' if self.dry_run else ''}"


class Reconcile(Protocol):
    """Make Temporal's schedules match the declarations for the tenants named."""

    def __call__(self, client: Client, pool: asyncpg.Pool, *, tenant_ids: Sequence[str] | None = ...,
                 task_queue: str = ...) -> Awaitable[SyncReport]: ...


class SetCapability(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    enabled: bool
    # None keeps what the row has (re-enabling remembers the site).
    website_url: str | None = None
    updated_by: str = "system"
    workflow_id: str | None = None


class CapabilityRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    enabled: bool
    website_url: str | None = None


class ApplyTenantSchedules(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str


class ScheduleActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = TENANT_DB

    def __init__(self, pool: asyncpg.Pool, reconcile: Reconcile, task_queue: str = WORKFLOWS_QUEUE,
                 client: Client | None = None) -> None:
        self._pool = pool
        self._reconcile = reconcile
        # The queue the scheduled runs are started on (tests point it at their own).
        self._task_queue = task_queue
        self._client = client

    @activity.defn(name="schedules.set_capability")
    async def set_capability(self, req: SetCapability) -> CapabilityRecord:
        """Upsert the row: the same request twice leaves the same row."""
        try:
            row = await self._pool.fetchrow(
                """INSERT INTO tenant_capabilities AS c
                       (tenant_id, capability, enabled, website_url, updated_by, workflow_id)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (tenant_id, capability) DO UPDATE SET
                       enabled = EXCLUDED.enabled,
                       website_url = COALESCE(EXCLUDED.website_url, c.website_url),
                       updated_by = EXCLUDED.updated_by,
                       workflow_id = EXCLUDED.workflow_id,
                       updated_at = now()
                   RETURNING tenant_id, capability, enabled, website_url""",
                req.tenant_id, req.capability, req.enabled, req.website_url, req.updated_by, req.workflow_id,
            )
        except asyncpg.ForeignKeyViolationError:
            raise ApplicationError(
                f"tenant {req.tenant_id!r} not found", type="TenantNotFound", non_retryable=True
            ) from None
        return CapabilityRecord(**dict(row))

    @with_policy(SCHEDULES)
    @activity.defn(name="schedules.apply_tenant")
    async def apply_tenant(self, req: ApplyTenantSchedules) -> SyncReport:
        """Create, update or delete this tenant's schedules to match its row (idempotent)."""
        client = self._client or activity.client()
        return await self._reconcile(client, self._pool, tenant_ids=[req.tenant_id], task_queue=self._task_queue)
