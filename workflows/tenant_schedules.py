"""Enable or disable a tenant's scheduled capability (e.g. the weekly presence audit).

The API starts this instead of writing rows: the first activity writes the
``tenant_capabilities`` row, the second applies the tenant's schedules to Temporal, the third
records the audit entry. Workflow id: ``{tenant_id}:tenant-capabilities:{capability}``
(reusable once closed; a change still running answers 409).
"""

from __future__ import annotations

from typing import Annotated

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.schedules import (
        TENANT_DB_RETRY,
        ApplyTenantSchedules,
        ScheduleActivities,
        ScheduleChange,
        SetCapability,
    )
    from core.activity import run_activity
    from core.names import SLUG_PATTERN
    from workflows.changes import audit_change
    from workflows.presence_audit import URL_PATTERN

CAPABILITY = "tenant-capabilities"



class CapabilityChange(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    capability: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    enabled: bool
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)] | None = None
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class CapabilityChangeResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    enabled: bool
    # What happened to the tenant's schedules (create / update / delete / unchanged / skipped).
    schedules: list[ScheduleChange] = []
    audit_id: int | None = None


@workflow.defn(name="TenantCapabilities")
class TenantCapabilitiesWorkflow:
    @workflow.run
    async def run(self, change: CapabilityChange) -> CapabilityChangeResult:
        info = workflow.info()
        record = await run_activity(
            ScheduleActivities.set_capability,
            SetCapability(tenant_id=change.tenant_id, capability=change.capability, enabled=change.enabled,
                          website_url=change.website_url, updated_by=change.requested_by,
                          workflow_id=info.workflow_id),
        )
        report = await run_activity(ScheduleActivities.apply_tenant, ApplyTenantSchedules(tenant_id=change.tenant_id))
        action = "tenant.capability_enabled" if record.enabled else "tenant.capability_disabled"
        receipt = await audit_change(
            change.tenant_id, change.requested_by, action,
            {"capability": change.capability, "schedules": {c.schedule_id: c.change for c in report.changes}},
            retry_policy=TENANT_DB_RETRY,  # as every step of this workflow: an unknown tenant is final
        )
        return CapabilityChangeResult(tenant_id=change.tenant_id, capability=change.capability,
                                      enabled=record.enabled, schedules=report.changes, audit_id=receipt.audit_id)
