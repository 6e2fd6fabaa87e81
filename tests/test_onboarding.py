"""Tenant onboarding on the dev server with the real activities and Postgres."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.billing import BillingCustomerActivities
from activities.tenants import AuditActivities, TenantActivities
from tests.conftest import unique
from tests.support import record_history
from workers.main import WORKFLOW_FAILURE_TYPES
from workflows.onboarding import OnboardingInput, OnboardingResult, OnboardingWorkflow


def _worker(client: Client, db: asyncpg.Pool, task_queue: str) -> Worker:
    """The workflow and its Postgres activities on a queue of the test's own; the billing steps
    run on the platform's integrations queue (the session's ``platform_worker``)."""
    tenants, audit, billing = TenantActivities(db), AuditActivities(db), BillingCustomerActivities(db)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[OnboardingWorkflow],
        activities=[tenants.create_tenant, tenants.set_status, audit.write, billing.record_customer],
        workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
    )


async def test_onboarding_creates_activates_and_audits_the_tenant(
    client: Client, db: asyncpg.Pool, task_queue: str, platform_worker: list[Worker]
) -> None:
    tenant = unique("acme")
    async with _worker(client, db, task_queue):
        handle = await client.start_workflow(
            OnboardingWorkflow.run,
            OnboardingInput(tenant_id=tenant, name="Acme Bakery", owner_email="owner@acme.io", plan="growth", requested_by="admin@x"),
            id=f"{tenant}:onboarding:{tenant}",
            task_queue=task_queue,
        )
        result = await handle.result()
        await record_history(handle, "onboarding")
        assert isinstance(result, OnboardingResult)
        assert (result.tenant_id, result.status) == (tenant, "active")
        progress = await handle.query(OnboardingWorkflow.progress)
        assert progress.stage == "completed"
        assert progress.steps_done == ["tenant_created", "billing_customers_created", "tenant_activated", "audit_recorded"]
        assert result.stripe_customer_id.startswith("cus_") and result.lago_customer_id

    row = await db.fetchrow("SELECT name, plan, status FROM tenants WHERE id = $1", tenant)
    assert dict(row) == {"name": "Acme Bakery", "plan": "growth", "status": "active"}
    audit = await db.fetch("SELECT actor, action, details FROM audit_log WHERE tenant_id = $1", tenant)
    assert [(a["actor"], a["action"]) for a in audit] == [("admin@x", "tenant.onboarded")]
    assert audit[0]["details"]["plan"] == "growth"
    ids = await db.fetchrow("SELECT stripe_customer_id, lago_customer_id FROM billing_customers WHERE tenant_id = $1", tenant)
    assert (ids["stripe_customer_id"], ids["lago_customer_id"]) == (result.stripe_customer_id, result.lago_customer_id)


async def test_tenant_activities_are_idempotent_on_retry(db: asyncpg.Pool) -> None:
    from activities.tenants import AuditEntry, CreateTenant

    tenant, wf = unique("retry"), f"wf-{uuid.uuid4()}"
    acts, audit = TenantActivities(db), AuditActivities(db)
    req = CreateTenant(tenant_id=tenant, name="R", plan="starter", owner_email="r@r.io", workflow_id=wf)
    first, again = await acts.create_tenant(req), await acts.create_tenant(req)
    assert (first.created, again.created) == (True, False)
    entry = AuditEntry(idempotency_key=f"{wf}:x", tenant_id=tenant, actor="a", action="x")
    r1, r2 = await audit.write(entry), await audit.write(entry)
    assert (r1.written, r2.written, r1.audit_id == r2.audit_id) == (True, False, True)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", tenant) == 1
    # Another workflow may not take over an existing tenant.
    with pytest.raises(ApplicationError) as info:
        await acts.create_tenant(CreateTenant(tenant_id=tenant, name="R", plan="starter", owner_email="r@r.io", workflow_id="other"))
    assert info.value.type == "TenantAlreadyExists" and info.value.non_retryable


async def test_invalid_input_fails_the_workflow_at_once(client: Client, db: asyncpg.Pool, task_queue: str) -> None:
    """A payload that does not decode into the input type fails the run, not its task forever."""
    async with _worker(client, db, task_queue):
        handle = await client.start_workflow(
            "Onboarding",
            {"tenant_id": "Bad Tenant!", "name": "", "owner_email": "nope"},
            id=f"bad:onboarding:{uuid.uuid4().hex}",
            task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError) as info:
            await asyncio.wait_for(handle.result(), timeout=10)
    assert "Expected `str` matching regex" in str(info.value.cause)
