"""Billing at the network edge: Stripe (localstripe), Lago (a Lago-compatible server), LLM
usage and AI budgets in Postgres — the real activities, and one real workflow on a worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from decimal import Decimal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import pytest
    import stripe
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.common import RetryPolicy
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.testing import ActivityEnvironment
    from temporalio.worker import Worker

    from activities.billing import BillingCustomerActivities, RecordBillingCustomer
    from activities.lago import USAGE_METRIC_CODE, CreateLagoCustomer, CreateLagoSubscription, LagoActivities, ReportUsage
    from activities.stripe import CreateStripeCustomer, StripeActivities
    from activities.usage import CheckBudget, RecordUsage, UsageActivities, estimate_cost
    from tests.support import STRIPE_TEST_KEY
    from tests.conftest import free_port, unique
    from sandboxes.lago import LagoState
    from workers.main import WORKFLOW_FAILURE_TYPES
    from core.settings import Settings


def _stripe_customer_req(tenant: str) -> CreateStripeCustomer:
    wf = f"{tenant}:onboarding:{tenant}"
    return CreateStripeCustomer(
        tenant_id=tenant, name="Acme Bakery", email=f"owner@{tenant}.io",
        idempotency_key=f"{wf}:stripe.create_customer",
    )


async def _customers_at_localstripe(url: str, tenant: str) -> list[str]:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, http_client=stripe.HTTPXClient())
    listing = await client.v1.customers.list_async({"limit": 100})
    return [c.id async for c in listing.auto_paging_iter() if c.metadata.to_dict().get("tenant_id") == tenant]


def _usage(tenant: str, key: str, **kw: object) -> RecordUsage:
    fields: dict[str, object] = {
        "idempotency_key": key, "tenant_id": tenant, "workflow_id": f"{tenant}:campaign:spring",
        "agent": "copywriter", "model": "gpt-4o-mini", "provider": "openai",
        "tokens_in": 1200, "tokens_out": 300,
    }
    fields.update(kw)
    return RecordUsage(**fields)  # type: ignore[arg-type]


async def _set_budget(db: asyncpg.Pool, tenant: str, usd: str) -> None:
    await db.execute(
        "INSERT INTO tenant_budgets (tenant_id, monthly_ai_budget_usd) VALUES ($1, $2)", tenant, Decimal(usd)
    )


# --- Stripe ------------------------------------------------------------------------------

async def test_stripe_create_customer_twice_makes_one_customer(billing_settings: Settings, localstripe_url: str) -> None:
    acts = StripeActivities(billing_settings)
    tenant = unique("acme")
    req = _stripe_customer_req(tenant)
    first = await acts.create_customer(req)
    again = await acts.create_customer(req)  # a retried activity
    assert first.created and not again.created
    assert first.customer_id == again.customer_id
    assert await _customers_at_localstripe(localstripe_url, tenant) == [first.customer_id]
    # Another tenant gets its own customer.
    other = await acts.create_customer(_stripe_customer_req(unique("other")))
    assert other.created and other.customer_id != first.customer_id
    await acts.close()


async def test_stripe_refusals_are_final_and_outages_are_retried(localstripe_url: str) -> None:
    req = _stripe_customer_req(unique("err"))
    bad_key = StripeActivities(Settings(_env_file=None, stripe={"api_base": localstripe_url, "api_key": "rk_wrong"}))
    with pytest.raises(ApplicationError) as refused:
        await bad_key.create_customer(req)
    assert refused.value.type == "StripeAuthenticationError" and refused.value.non_retryable

    down = StripeActivities(
        Settings(_env_file=None, stripe={"api_base": f"http://127.0.0.1:{free_port()}", "api_key": STRIPE_TEST_KEY})
    )
    with pytest.raises(ApplicationError) as outage:
        await down.create_customer(req)
    assert outage.value.type == "StripeAPIConnectionError" and not outage.value.non_retryable

    unset = StripeActivities(Settings(_env_file=None))
    with pytest.raises(ApplicationError) as missing:
        await unset.create_customer(req)
    assert missing.value.type == "StripeNotConfigured" and missing.value.non_retryable


# --- Lago --------------------------------------------------------------------------------

async def test_lago_create_customer_and_subscription_are_idempotent(
    billing_settings: Settings, lago_state: LagoState, db: asyncpg.Pool
) -> None:
    acts = LagoActivities(billing_settings, db)
    tenant = unique("acme")
    req = CreateLagoCustomer(tenant_id=tenant, name="Acme Bakery", email=f"owner@{tenant}.io", timezone="Europe/Paris")
    first, again = await acts.create_customer(req), await acts.create_customer(req)
    assert first.lago_customer_id == again.lago_customer_id and first.external_id == tenant
    assert [c["lago_id"] for c in lago_state.customers.values() if c["external_id"] == tenant] == [first.lago_customer_id]
    assert lago_state.customers[tenant]["email"] == f"owner@{tenant}.io"
    # The real client reads it back (GET /customers/{external_id}) through the same prefix.
    found = await asyncio.to_thread(acts.client.customers.find, tenant)  # the sync client, off the loop
    assert (found.lago_id, found.applicable_timezone) == (first.lago_customer_id, "Europe/Paris")

    sub_req = CreateLagoSubscription(tenant_id=tenant, plan_code="starter")
    sub, sub_again = await acts.create_subscription(sub_req), await acts.create_subscription(sub_req)
    assert sub.lago_subscription_id == sub_again.lago_subscription_id and sub.external_id == tenant
    assert [s["external_id"] for s in lago_state.subscriptions.values() if s["external_customer_id"] == tenant] == [tenant]

    # The ids of the onboarding are kept once; a later different id never replaces them.
    records = BillingCustomerActivities(db)
    await records.record_customer(RecordBillingCustomer(tenant_id=tenant, stripe_customer_id="cus_first"))
    row = await records.record_customer(
        RecordBillingCustomer(tenant_id=tenant, stripe_customer_id="cus_other", lago_customer_id=first.lago_customer_id)
    )
    assert (row.stripe_customer_id, row.lago_customer_id) == ("cus_first", first.lago_customer_id)


async def test_lago_refusals_map_to_non_retryable_types(billing_settings: Settings, db: asyncpg.Pool) -> None:
    wrong_key = Settings(_env_file=None, lago={"api_url": billing_settings.lago.api_url, "api_key": "nope"})
    with pytest.raises(ApplicationError) as refused:
        await LagoActivities(wrong_key, db).create_customer(CreateLagoCustomer(tenant_id=unique("k"), name="K"))
    assert refused.value.type == "LagoUnauthorized" and refused.value.non_retryable

    down = Settings(_env_file=None, lago={"api_url": f"http://127.0.0.1:{free_port()}/", "api_key": "x"})
    with pytest.raises(ApplicationError) as outage:
        await LagoActivities(down, db).create_customer(CreateLagoCustomer(tenant_id=unique("k"), name="K"))
    assert outage.value.type == "LagoUnavailable" and not outage.value.non_retryable


# --- Usage -------------------------------------------------------------------------------

async def test_usage_recorded_twice_is_one_row_and_reported_to_lago_once(
    billing_settings: Settings, lago_state: LagoState, db: asyncpg.Pool
) -> None:
    tenant = unique("acme")
    usage, lago = UsageActivities(db), LagoActivities(billing_settings, db)
    key = f"{tenant}:campaign:spring:llm:draft:1"
    first, again = await usage.record(_usage(tenant, key)), await usage.record(_usage(tenant, key))
    assert (first.recorded, again.recorded) == (True, False)
    assert first.usage_id == again.usage_id and first.cost_usd == again.cost_usd == Decimal("0.000360")
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE tenant_id = $1", tenant) == 1

    await usage.record(_usage(tenant, f"{tenant}:campaign:spring:llm:draft:2", model="gpt-4o", cost_usd=Decimal("0.25")))
    offline = await usage.record(_usage(tenant, f"{tenant}:campaign:spring:llm:draft:3", provider="offline"))
    assert offline.cost_usd == 0

    env = ActivityEnvironment()
    heartbeats: list[object] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    report = await env.run(lago.report_usage, ReportUsage(tenant_id=tenant))
    assert (report.sent, report.duplicates, len(report.usage_ids), report.more) == (3, 0, 3, False)
    assert offline.usage_id in report.usage_ids  # offline usage is reported too, at zero cost
    assert heartbeats == report.usage_ids

    events = {e["transaction_id"]: e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)}
    offline_key = f"{tenant}:campaign:spring:llm:draft:3"
    assert set(events) == {key, f"{tenant}:campaign:spring:llm:draft:2", offline_key}
    assert events[key]["properties"] == {
        "tokens_in": 1200, "tokens_out": 300, "cost_usd": "0.000360", "model": "gpt-4o-mini",
        "provider": "openai", "offline": False, "agent": "copywriter", "workflow_id": f"{tenant}:campaign:spring",
    }
    assert events[offline_key]["properties"]["offline"] is True
    assert events[offline_key]["properties"]["cost_usd"] == "0.000000"

    # A retry after the events were sent but before the rows were marked: Lago keeps one each.
    posts_before = lago_state.event_posts
    await db.execute("UPDATE llm_usage SET reported_to_lago_at = NULL WHERE tenant_id = $1", tenant)
    retry = await env.run(lago.report_usage, ReportUsage(tenant_id=tenant))
    assert (retry.sent, retry.duplicates, sorted(retry.usage_ids)) == (0, 3, sorted(report.usage_ids))
    assert lago_state.event_posts == posts_before + 3
    assert len(lago_state.events_of(tenant)) == 3
    # And once marked, nothing is sent again.
    again_report = await env.run(lago.report_usage, ReportUsage(tenant_id=tenant))
    assert (again_report.sent, again_report.duplicates, again_report.usage_ids) == (0, 0, [])
    unreported = await db.fetchval(
        "SELECT count(*) FROM llm_usage WHERE tenant_id = $1 AND reported_to_lago_at IS NULL", tenant
    )
    assert unreported == 0


def test_estimate_cost_uses_the_price_table() -> None:
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == Decimal("0.750000")
    assert estimate_cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == Decimal("0.150000")
    assert estimate_cost("openai/gpt-4o", 0, 1_000_000) == Decimal("10.000000")
    assert estimate_cost("some-local-model", 1_000_000, 0) == Decimal("2.500000")  # the default price
    assert estimate_cost("gpt-4o", 1_000_000, 1_000_000, provider="offline") == 0


async def test_check_budget_returns_what_remains_and_refuses_a_tenant_over_budget(db: asyncpg.Pool) -> None:
    usage = UsageActivities(db)
    tenant = unique("acme")
    unlimited = await usage.check_budget(CheckBudget(tenant_id=tenant))
    assert (unlimited.budget_usd, unlimited.remaining_usd, unlimited.spent_usd) == (None, None, 0)

    await _set_budget(db, tenant, "5.00")
    await usage.record(_usage(tenant, f"{tenant}:k:1", cost_usd=Decimal("4.00")))
    # Last month's spend does not count against this month's budget.
    await db.execute(
        """INSERT INTO llm_usage (idempotency_key, tenant_id, agent, model, provider, tokens_in, tokens_out,
                                  cost_usd, created_at)
           VALUES ($1, $2, 'a', 'gpt-4o', 'openai', 1, 1, 100,
                   date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 hour')""",
        f"{tenant}:k:last-month", tenant,
    )
    status = await usage.check_budget(CheckBudget(tenant_id=tenant))
    assert (status.budget_usd, status.spent_usd, status.remaining_usd) == (Decimal("5.00"), Decimal("4.00"), Decimal("1.00"))

    await usage.record(_usage(tenant, f"{tenant}:k:2", cost_usd=Decimal("1.12")))
    with pytest.raises(ApplicationError) as over:
        await usage.check_budget(CheckBudget(tenant_id=tenant))
    assert over.value.type == "AIBudgetExceeded" and over.value.non_retryable
    assert over.value.message == f"tenant {tenant} is over its monthly AI budget of $5.00 (spent $5.12)"


# --- On a real worker --------------------------------------------------------------------

LLM_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name="TestBudgetedStep")
class BudgetedStepWorkflow:
    """Records an LLM call, then checks the budget before the next (expensive) step."""

    @workflow.run
    async def run(self, tenant_id: str) -> str:
        wf_id = workflow.info().workflow_id
        await workflow.execute_activity_method(
            UsageActivities.record,
            RecordUsage(
                idempotency_key=f"{wf_id}:llm:outline", tenant_id=tenant_id, workflow_id=wf_id,
                agent="strategist", model="gpt-4o", provider="openai", tokens_in=1000, tokens_out=500,
                cost_usd=Decimal("3.00"),
            ),
            start_to_close_timeout=LLM_TIMEOUT,
        )
        status = await workflow.execute_activity_method(
            UsageActivities.check_budget,
            CheckBudget(tenant_id=tenant_id),
            start_to_close_timeout=LLM_TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1)),  # unlimited attempts
        )
        return str(status.remaining_usd)


async def test_budget_exceeded_fails_the_workflow_at_once(client: Client, db: asyncpg.Pool, task_queue: str) -> None:
    usage = UsageActivities(db)
    under, over = unique("under"), unique("over")
    await _set_budget(db, under, "10.00")
    await _set_budget(db, over, "2.00")
    async with Worker(
        client, task_queue=task_queue, workflows=[BudgetedStepWorkflow],
        activities=[usage.record, usage.check_budget],
        workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
    ):
        remaining = await client.execute_workflow(
            BudgetedStepWorkflow.run, under, id=f"{under}:test-budget:{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        assert Decimal(remaining) == Decimal("7.00")

        started = time.monotonic()
        handle = await client.start_workflow(
            BudgetedStepWorkflow.run, over, id=f"{over}:test-budget:{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        assert time.monotonic() - started < 5  # no retries with a 1 s back-off behind it
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    cause = activity_error.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "AIBudgetExceeded" and cause.non_retryable
    assert "monthly AI budget of $2.00 (spent $3.00)" in cause.message
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [1, 1]  # usage.record once, usage.check_budget once: never retried
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE tenant_id = $1", over) == 1
