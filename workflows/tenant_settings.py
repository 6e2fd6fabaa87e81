"""Change a tenant's settings of one capability (e.g. the campaign budget cap).

The settings API validates the new settings against the capability's declared Struct, then
starts this instead of writing rows: the first activity replaces the ``tenant_settings`` row,
the second records who changed what in the audit log. Workflow id:
``{tenant_id}:tenant-settings:{capability}`` (reusable once closed; a change still running
answers 409).
"""

from __future__ import annotations

from typing import Annotated, Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.tenants import PutSettings, TenantActivities
    from core.activity import run_activity
    from core.names import SLUG_PATTERN
    from workflows.changes import audit_change

NAME = "tenant-settings"
ACTION = "tenant.settings_changed"


class SettingsChange(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    capability: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    # The tenant's departures from the declared defaults (validated by the API).
    settings: dict[str, Any]
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class SettingsChangeResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    capability: str
    settings: dict[str, Any]
    # Each changed field: {"from": ..., "to": ...} (a field left at its default reads as null).
    changed: dict[str, Any] = {}
    audit_id: int | None = None


@workflow.defn(name="TenantSettings")
class TenantSettingsWorkflow:
    @workflow.run
    async def run(self, change: SettingsChange) -> SettingsChangeResult:
        info = workflow.info()
        written = await run_activity(
            TenantActivities.put_settings,
            PutSettings(tenant_id=change.tenant_id, capability=change.capability, settings=change.settings,
                        updated_by=change.requested_by, workflow_id=info.workflow_id),
        )
        changed = {k: {"from": written.before.get(k), "to": written.after.get(k)}
                   for k in sorted({*written.before, *written.after})
                   if written.before.get(k) != written.after.get(k)}
        receipt = await audit_change(change.tenant_id, change.requested_by, ACTION,
                                     {"capability": change.capability, "changed": changed})
        return SettingsChangeResult(tenant_id=change.tenant_id, capability=change.capability,
                                    settings=written.after, changed=changed, audit_id=receipt.audit_id)
