"""Enable or disable a tenant's scheduled capability (e.g. the weekly presence audit).

The API starts this instead of writing rows: the first activity writes the
``tenant_capabilities`` row, the second applies the tenant's schedules to Temporal, the third
records the audit entry. Workflow id: ``{tenant_id}:tenant-capabilities:{capability}``
(reusable once closed; a change still running answers 409).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the sandbox on every run
    from activities.schedules import ApplyTenantSchedules, ScheduleActivities, SetCapability
    from activities.tenants import AuditActivities, AuditEntry
    from schedules.reconciler import ScheduleChange
    from core.names import SLUG_PATTERN
    from workflows.presence_audit import URL_PATTERN

CAPABILITY = "tenant-capabilities"

# Named per kind of dependency: Postgres writes and Temporal schedule calls are quick and
# safe to retry; an unknown tenant is not worth retrying.
DB_TIMEOUT = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10),
                       non_retryable_error_types=["TenantNotFound"])
SCHEDULES_TIMEOUT = timedelta(seconds=60)
SCHEDULES_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=30))


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
        record = await workflow.execute_activity_method(
            ScheduleActivities.set_capability,
            SetCapability(tenant_id=change.tenant_id, capability=change.capability, enabled=change.enabled,
                          website_url=change.website_url, updated_by=change.requested_by,
                          workflow_id=info.workflow_id),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        report = await workflow.execute_activity_method(
            ScheduleActivities.apply_tenant, ApplyTenantSchedules(tenant_id=change.tenant_id),
            start_to_close_timeout=SCHEDULES_TIMEOUT, retry_policy=SCHEDULES_RETRY,
        )
        action = "tenant.capability_enabled" if record.enabled else "tenant.capability_disabled"
        receipt = await workflow.execute_activity_method(
            AuditActivities.write,
            # The id is reused by later changes of the same capability: the run id keeps keys apart.
            AuditEntry(idempotency_key=f"{info.workflow_id}:{info.run_id}:{action}", tenant_id=change.tenant_id,
                       actor=change.requested_by, action=action, workflow_id=info.workflow_id,
                       details={"capability": change.capability,
                                "schedules": {c.schedule_id: c.change for c in report.changes}}),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        return CapabilityChangeResult(tenant_id=change.tenant_id, capability=change.capability,
                                      enabled=record.enabled, schedules=report.changes, audit_id=receipt.audit_id)
