"""Tenant onboarding: the onboarding wizard's back end and the tenant's onboarding status.

Creates the tenant row (idempotent on the tenant id), its Stripe customer and its Lago
customer and subscription (integrations queue, idempotent: a retry finds the same ones), records
their ids, activates the tenant, writes the audit entry, and exposes its progress by the
``progress`` query. Workflow id:
``{tenant_id}:onboarding:{tenant_id}`` — one onboarding per tenant, ever.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.billing import BillingCustomerActivities, BillingCustomerRecord, RecordBillingCustomer
    from activities.lago import CreateLagoCustomer, CreateLagoSubscription, LagoActivities
    from activities.stripe import CreateStripeCustomer, StripeActivities
    from activities.tenants import (
        AuditActivities,
        AuditEntry,
        CreateTenant,
        SetTenantStatus,
        TenantActivities,
    )
    from core.activity import run_activity
    from core.names import EMAIL_PATTERN, NEW_TENANT_PATTERN
    from workflows.stages import Stages
    from workflows.capability import ADMINS, Capability, Event, InvalidEvent, Trigger

NAME = "onboarding"


Stage = Literal["started", "creating_tenant", "creating_billing_customers", "activating", "recording_audit",
                "completed", "failed"]


class OnboardingInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(
        pattern=NEW_TENANT_PATTERN, description="lower-case slug, 2-63 chars; not `global` (the platform's)")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    owner_email: Annotated[str, msgspec.Meta(pattern=EMAIL_PATTERN, max_length=254)]
    plan: Literal["starter", "growth", "enterprise"] = "starter"
    timezone: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+\-]+)*$", max_length=64)] = "UTC"
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


def tenant_created(event: Event) -> tuple[str, str, OnboardingInput]:
    """Platform ``tenant.created``: onboarding, keyed by the tenant id (one per tenant, ever)."""
    try:
        inp = msgspec.convert({**event.payload, "requested_by": event.sender}, OnboardingInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"tenant: {exc}") from None
    return inp.tenant_id, inp.tenant_id, inp


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
    stripe_customer_id: str | None = None
    lago_customer_id: str | None = None


@workflow.defn(name="Onboarding")
class OnboardingWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._tenant_id = ""

    @workflow.run
    async def run(self, inp: OnboardingInput) -> OnboardingResult:
        self._tenant_id = inp.tenant_id
        wf_id = workflow.info().workflow_id
        try:
            await self.stage("creating_tenant")
            tenant = await run_activity(
                TenantActivities.create_tenant,
                CreateTenant(
                    tenant_id=inp.tenant_id, name=inp.name, plan=inp.plan,
                    owner_email=inp.owner_email, timezone=inp.timezone, workflow_id=wf_id,
                ),
            )
            await self.stage("creating_billing_customers", "tenant_created")
            billing = await self._billing_customers(inp, wf_id)
            await self.stage("activating", "billing_customers_created")
            tenant = await run_activity(
                TenantActivities.set_status,
                SetTenantStatus(tenant_id=inp.tenant_id, status="active"),
            )
            await self.stage("recording_audit", "tenant_activated")
            receipt = await run_activity(
                AuditActivities.write,
                AuditEntry(
                    idempotency_key=f"{wf_id}:tenant.onboarded",
                    tenant_id=inp.tenant_id,
                    actor=inp.requested_by,
                    action="tenant.onboarded",
                    workflow_id=wf_id,
                    details={"plan": inp.plan, "name": inp.name},
                ),
            )
            self._enter("completed", "audit_recorded")
        except Exception:
            self._enter("failed")
            raise
        return OnboardingResult(
            tenant_id=tenant.tenant_id, status=tenant.status,
            created_at=tenant.created_at, audit_id=receipt.audit_id,
            stripe_customer_id=billing.stripe_customer_id, lago_customer_id=billing.lago_customer_id,
        )

    async def _billing_customers(self, inp: OnboardingInput, wf_id: str) -> BillingCustomerRecord:
        """The tenant's Stripe customer and Lago customer + subscription (on its plan), then
        their ids in ``billing_customers``. Each step is idempotent on the tenant id."""
        stripe_customer = await run_activity(
            StripeActivities.create_customer,
            CreateStripeCustomer(tenant_id=inp.tenant_id, name=inp.name, email=inp.owner_email,
                                 idempotency_key=f"{wf_id}:stripe.create_customer"),
        )
        lago_customer = await run_activity(
            LagoActivities.create_customer,
            CreateLagoCustomer(tenant_id=inp.tenant_id, name=inp.name, email=inp.owner_email, timezone=inp.timezone),
        )
        await run_activity(
            LagoActivities.create_subscription,
            CreateLagoSubscription(tenant_id=inp.tenant_id, plan_code=inp.plan),
        )
        return await run_activity(
            BillingCustomerActivities.record_customer,
            RecordBillingCustomer(tenant_id=inp.tenant_id, stripe_customer_id=stripe_customer.customer_id,
                                  lago_customer_id=lago_customer.lago_customer_id),
        )

    @workflow.query(name="progress")
    def progress(self) -> OnboardingProgress:
        return OnboardingProgress(
            tenant_id=self._tenant_id, stage=self._stage,
            steps_done=list(self._steps), updated_at=self._updated_at,
        )


CAPABILITY = Capability(
    name=NAME,
    workflow=OnboardingWorkflow,
    input_type=OnboardingInput,
    business_key=lambda inp: inp.tenant_id,
    tenant_in_input=lambda inp: inp.tenant_id,
    creates_tenant=True,
    start_roles=ADMINS,
    summary="Onboard a tenant: create and activate it, record the audit entry.",
    triggers=(Trigger(source="platform", event_type="tenant.created", build=tenant_created),),
)
