"""Declared schedules: what the platform runs on a clock, per tenant or once for the platform.

A per-tenant schedule exists for every active tenant that enabled its capability (table
``tenant_capabilities``), in the tenant's time zone; a global one exists once. The reconciler
(``schedules/reconciler.py``) applies these declarations to Temporal at worker start-up and
on ``bizosaas schedules sync``. Adding a scheduled capability is one entry in ``SCHEDULES``.

Schedule ids: ``biz:{tenant_id}:{name}`` and ``biz:global:{name}``. Each scheduled run is
started as ``{tenant}:{capability}:{key}-{scheduled time}`` (Temporal appends the time) with
the ``BizTenantId`` and ``BizCapability`` search attributes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from temporalio.client import ScheduleOverlapPolicy

from schedules.frequency import HORIZON, shortest_gap
from workflows.catalogue import CATALOGUE
from workflows.presence_audit import PresenceAuditInput
from workflows.seo_health import SeoHealthInput
from workflows.tenant_health import TenantHealthInput

OWNED_PREFIX = "biz:"
# The "tenant" of global schedules and of the runs they start; never a real tenant id.
GLOBAL = "global"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class TenantContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a schedule's input may depend on: the tenant row and its capability row."""

    tenant_id: str
    timezone: str = "UTC"
    website_url: str | None = None


@dataclass(frozen=True)
class ScheduleDecl:
    name: str  # slug, unique: the last part of the schedule id
    capability: str  # a CATALOGUE name: the workflow started and its BizCapability
    key: str  # business key of the runs: {tenant}:{capability}:{key}-{scheduled time}
    input: Callable[[TenantContext], Any]  # the workflow input, built per tenant
    cron: tuple[str, ...] = ()
    every: timedelta | None = None
    # None: the tenant's time zone (per-tenant schedules), UTC for global ones.
    time_zone: str | None = None
    per_tenant: bool = True
    # A run still going when the next is due: skip it, or keep one waiting. Never more, so a
    # slow run cannot pile up paid work (an admin's backfill may choose otherwise).
    overlap: ScheduleOverlapPolicy = ScheduleOverlapPolicy.SKIP
    # No spec, declared or set through the API (by an admin), may fire more often than this:
    # each run costs crawls and LLM calls. At most a day (schedules/frequency.py).
    min_interval: timedelta = timedelta(hours=1)
    # Runs missed while Temporal was down are made up within this window, then skipped.
    catchup_window: timedelta = timedelta(days=1)
    jitter: timedelta | None = None
    # Columns of the tenant_capabilities row the input needs; enabling asks for them.
    requires: tuple[str, ...] = ()
    summary: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or not _NAME.match(self.key):
            raise ValueError(f"schedule {self.name!r}: name and key must be slugs")
        if self.capability not in CATALOGUE:
            raise ValueError(f"schedule {self.name!r}: unknown capability {self.capability!r}")
        if bool(self.cron) == (self.every is not None):
            raise ValueError(f"schedule {self.name!r}: give cron or every, not both")
        if self.overlap not in (ScheduleOverlapPolicy.SKIP, ScheduleOverlapPolicy.BUFFER_ONE):
            raise ValueError(f"schedule {self.name!r}: overlap must be SKIP or BUFFER_ONE")
        if not timedelta(0) < self.min_interval <= HORIZON:
            raise ValueError(f"schedule {self.name!r}: min_interval must be more than 0 and at most {HORIZON}")
        gap = shortest_gap(self.cron, int(self.every.total_seconds()) if self.every else None)
        if gap is None or gap < self.min_interval:
            raise ValueError(f"schedule {self.name!r}: fires more often than its min_interval {self.min_interval}")
        unknown = set(self.requires) - set(TenantContext.__struct_fields__)
        if unknown:
            raise ValueError(f"schedule {self.name!r}: requires unknown fields {sorted(unknown)}")


def schedule_id(tenant_id: str, name: str) -> str:
    return f"{OWNED_PREFIX}{tenant_id}:{name}"


SCHEDULES: dict[str, ScheduleDecl] = {
    d.name: d
    for d in (
        ScheduleDecl(
            name="presence-audit-weekly",
            capability="presence-audit",
            key="weekly",
            input=lambda t: PresenceAuditInput(
                tenant_id=t.tenant_id, website_url=t.website_url or "", requested_by="schedule"
            ),
            # Monday 06:00 in the tenant's time zone; jitter spreads tenants over half an hour.
            cron=("0 6 * * 1",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            requires=("website_url",),
            summary="Weekly Digital Presence Audit of the tenant's website.",
        ),
        ScheduleDecl(
            name="seo-health-weekly",
            capability="seo-health",
            key="weekly",
            input=lambda t: SeoHealthInput(
                tenant_id=t.tenant_id, website_url=t.website_url or "", requested_by="schedule"
            ),
            # Monday 07:00 in the tenant's time zone (after the audit); jitter spreads tenants.
            cron=("0 7 * * 1",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            requires=("website_url",),
            summary="Weekly SEO Health Monitor of the tenant's website: technical scan and the shift since last week.",
        ),
        ScheduleDecl(
            name="tenant-health-daily",
            capability="tenant-health",
            key="daily",
            input=lambda t: TenantHealthInput(requested_by="schedule"),
            cron=("0 5 * * *",),  # 05:00 UTC, once for the platform
            per_tenant=False,
            min_interval=timedelta(hours=6),
            summary="Daily Tenant Health Guardian over every tenant.",
        ),
    )
}


def tenant_schedules(capability: str | None = None) -> list[ScheduleDecl]:
    """The per-tenant declarations (of one capability, when named)."""
    return [d for d in SCHEDULES.values() if d.per_tenant and capability in (None, d.capability)]


def scheduled_capabilities() -> frozenset[str]:
    """Capabilities a tenant can enable to get schedules."""
    return frozenset(d.capability for d in tenant_schedules())
