"""Tenant onboarding: the onboarding wizard's back end and the tenant's onboarding status.

Creates the tenant row (idempotent on the tenant id), activates it, writes the audit entry,
and exposes its progress by the ``progress`` query. Workflow id:
``{tenant_id}:onboarding:{tenant_id}`` — one onboarding per tenant, ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the sandbox on every run
    from activities.tenants import (
        AuditActivities,
        AuditEntry,
        CreateTenant,
        SetTenantStatus,
        TenantActivities,
    )
    from workflows.names import SLUG_PATTERN

CAPABILITY = "onboarding"

# Named per kind of dependency: Postgres writes are quick and safe to retry.
DB_TIMEOUT = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10))

Stage = Literal["started", "creating_tenant", "activating", "recording_audit", "completed", "failed"]


class OnboardingInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, description="lower-case slug, 2-63 chars")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    owner_email: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
    plan: Literal["starter", "growth", "enterprise"] = "starter"
    timezone: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+\-]+)*$", max_length=64)] = "UTC"
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class OnboardingProgress(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    stage: Stage
    steps_done: list[str]
    updated_at: datetime | None = None


class OnboardingResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    status: str
    created_at: datetime
    audit_id: int


@workflow.defn(name="Onboarding")
class OnboardingWorkflow:
    def __init__(self) -> None:
        self._tenant_id = ""
        self._stage: Stage = "started"
        self._steps: list[str] = []
        self._updated_at: datetime | None = None

    def _enter(self, stage: Stage, done: str | None = None) -> None:
        if done:
            self._steps.append(done)
        self._stage = stage
        self._updated_at = workflow.now()

    @workflow.run
    async def run(self, inp: OnboardingInput) -> OnboardingResult:
        self._tenant_id = inp.tenant_id
        wf_id = workflow.info().workflow_id
        try:
            self._enter("creating_tenant")
            tenant = await workflow.execute_activity_method(
                TenantActivities.create_tenant,
                CreateTenant(
                    tenant_id=inp.tenant_id, name=inp.name, plan=inp.plan,
                    owner_email=inp.owner_email, timezone=inp.timezone, workflow_id=wf_id,
                ),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
            self._enter("activating", "tenant_created")
            tenant = await workflow.execute_activity_method(
                TenantActivities.set_status,
                SetTenantStatus(tenant_id=inp.tenant_id, status="active"),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
            self._enter("recording_audit", "tenant_activated")
            receipt = await workflow.execute_activity_method(
                AuditActivities.write,
                AuditEntry(
                    idempotency_key=f"{wf_id}:tenant.onboarded",
                    tenant_id=inp.tenant_id,
                    actor=inp.requested_by,
                    action="tenant.onboarded",
                    workflow_id=wf_id,
                    details={"plan": inp.plan, "name": inp.name},
                ),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
            self._enter("completed", "audit_recorded")
        except Exception:
            self._enter("failed")
            raise
        return OnboardingResult(
            tenant_id=tenant.tenant_id, status=tenant.status,
            created_at=tenant.created_at, audit_id=receipt.audit_id,
        )

    @workflow.query(name="progress")
    def progress(self) -> OnboardingProgress:
        return OnboardingProgress(
            tenant_id=self._tenant_id, stage=self._stage,
            steps_done=list(self._steps), updated_at=self._updated_at,
        )
