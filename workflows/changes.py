"""Workflow steps shared by the platform's change workflows (``workflows.capability.platform_change``):
the audit entry that records who changed what."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.tenants import AuditActivities, AuditEntry, AuditReceipt
    from core.activity import run_activity


async def audit_change(tenant_id: str, actor: str, action: str, details: dict[str, Any],
                       **options: Any) -> AuditReceipt:
    """Write the change's audit entry once. A change workflow's id is reused by the next change of
    the same subject: the run id keeps their idempotency keys apart. ``options`` as for
    :func:`core.activity.run_activity` (e.g. the workflow's retry policy)."""
    info = workflow.info()
    return await run_activity(
        AuditActivities.write,
        AuditEntry(idempotency_key=f"{info.workflow_id}:{info.run_id}:{action}", tenant_id=tenant_id,
                   actor=actor, action=action, workflow_id=info.workflow_id, details=details),
        **options,
    )
