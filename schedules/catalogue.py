"""Declared schedules: what the platform runs on a clock, per tenant or once for the platform.

A per-tenant schedule exists for every active tenant that enabled its capability (table
``tenant_capabilities``), in the tenant's time zone; a global one exists once. The reconciler
(``schedules/reconciler.py``) applies these declarations to Temporal at worker start-up and
on ``bizosaas schedules sync``. Schedules are declared by their capability, in its module
(``CAPABILITY.schedules``, workflows/capability.py); ``SCHEDULES`` is derived from them.

Schedule ids: ``biz:{tenant_id}:{name}`` and ``biz:global:{name}``. Each scheduled run is
started as ``{tenant}:{capability}:{key}-{scheduled time}`` (Temporal appends the time) with
the ``BizTenantId`` and ``BizCapability`` search attributes.
"""

from __future__ import annotations

from core.names import PLATFORM_TENANT
from workflows.capability import ScheduleDecl, TenantContext
from workflows.catalogue import schedules

__all__ = ["GLOBAL", "OWNED_PREFIX", "SCHEDULES", "ScheduleDecl", "TenantContext", "schedule_id",
           "scheduled_capabilities", "tenant_schedules"]

OWNED_PREFIX = "biz:"
# The "tenant" of global schedules and of the runs they start; never a real tenant id.
GLOBAL = PLATFORM_TENANT


def schedule_id(tenant_id: str, name: str) -> str:
    return f"{OWNED_PREFIX}{tenant_id}:{name}"


# Derived from the capabilities' declarations (each module's ``CAPABILITY.schedules``).
SCHEDULES: dict[str, ScheduleDecl] = {d.name: d for d in schedules()}


def tenant_schedules(capability: str | None = None) -> list[ScheduleDecl]:
    """The per-tenant declarations (of one capability, when named)."""
    return [d for d in SCHEDULES.values() if d.per_tenant and capability in (None, d.capability)]


def scheduled_capabilities() -> frozenset[str]:
    """Capabilities a tenant can enable to get schedules."""
    return frozenset(d.capability for d in tenant_schedules())
