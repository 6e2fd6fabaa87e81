"""Every capability that waits survives a restart of the worker at its wait.

Each test takes a workflow to its wait (an approval, a retry timer) with the workflow worker
running as a process of its own (``bizosaas worker --queue biz-workflows``), stops that process,
starts a new one (a fresh interpreter: it must rebuild the workflow from its history alone), and
takes the workflow to its end from there. The agents and integrations queues run in this process.

Each test runs in a namespace of its own, so the session's platform worker never takes a task.
With ``BIZ_RECORD_HISTORIES=1`` the histories are written to ``tests/histories/`` (see
``tests/test_histories.py``, which replays them all in a fresh interpreter).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import stripe
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from hitl.protocol import ApprovalsView, Decider, DecisionInput, DecisionReceipt
from tests.support import (
    STRIPE_TEST_KEY,
    add_tenant,
    assert_eventually,
    connect_when_ready,
    connect_wordpress,
    in_namespace,
    platform_workers,
    record_history,
    run_temporal_cli,
    signed,
    stop_process,
    unique,
    wordpress_site,
    worker_process,
)
from tests.test_affiliate_payout import paid_invoice
from tests.test_dunning import failing_invoice
from tests.test_orders import authorized_payment, payment_status
from core.settings import Settings
from workflows.affiliate_payout import AffiliatePayoutInput, AffiliatePayoutResult, AffiliatePayoutWorkflow
from workflows.cart_recovery import CHECKOUT_SIGNAL, CartRecoveryInput, CartRecoveryResult, CartRecoveryWorkflow
from workflows.campaign import CampaignInput, CampaignResult, CampaignWorkflow
from workflows.content_pipeline import SeoContentWorkflow
from workflows.content_post import ContentInput, ContentResult
from workflows.email_sequence import EmailSequenceInput, EmailSequenceResult, EmailSequenceWorkflow
from workflows.dunning import DunningInput, DunningProgress, DunningResult, DunningWorkflow, invoice_key
from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, WORKFLOWS_QUEUE
from workflows.orders import OrderInput, OrderLine, OrderProcessingWorkflow, OrderResult
from workflows.social_calendar_types import CalendarInput, SlotInput, SlotView, WithdrawRequest
from workflows.social_schedule import SocialCalendarWorkflow


@pytest.fixture
async def ours(settings: Settings, namespace: str) -> Settings:
    return in_namespace(settings, namespace)


@pytest.fixture
async def ns_client(ours: Settings) -> Client:
    return await connect_when_ready(ours)


@pytest.fixture
async def side_workers(ns_client: Client, ours: Settings, db: asyncpg.Pool, mcp_sandbox: str) -> AsyncIterator[None]:
    """Agents and integrations in this process; the workflow worker is the test's process."""
    async with platform_workers(ns_client, ours, db, [AGENTS_QUEUE, INTEGRATIONS_QUEUE]):
        yield


async def restart_at(ours: Settings, state: Path, waiting: Any, then: Any) -> Any:
    """Run the workflow worker until ``waiting()`` passes, stop it (SIGTERM, drained), start a new
    process and return what ``then()`` returns with it running."""
    log = state / "worker.log"
    async with worker_process(ours, [WORKFLOWS_QUEUE], state, log) as first:
        async def at_wait() -> Any:
            assert first.poll() is None, log.read_text(errors="replace")[-4000:]
            return await waiting()

        await assert_eventually(at_wait, timeout=120, interval=0.2)
        assert await stop_process(first) == 0, log.read_text(errors="replace")[-4000:]
    async with worker_process(ours, [WORKFLOWS_QUEUE], state, log) as second:
        try:
            return await then()
        finally:
            assert second.poll() is None, log.read_text(errors="replace")[-4000:]


def client_decider(tenant: str) -> Decider:
    return Decider(sub=f"owner@{tenant}", roles=["client"], tenant_id=tenant)


async def open_request(handle: WorkflowHandle, workflow_cls: Any, request_id: str,
                       history: str | None = None) -> ApprovalsView:
    """The workflow's approvals, with ``request_id`` open; its history recorded as ``history``
    (tests/histories/) once it is, when a name is given."""
    view = await handle.query(workflow_cls.approvals, result_type=ApprovalsView)
    assert view.open is not None and view.open.request.request_id == request_id, view
    if history is not None:
        await record_history(handle, history)
    return view


async def test_a_campaign_waiting_for_the_client_survives_a_restart_and_launches(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool
) -> None:
    tenant = unique("bakery")
    inp = CampaignInput(tenant_id=tenant, campaign_key=unique("spring"), goal="Sell more sourdough this spring",
                        channels=["google_ads", "meta_ads"], budget_usd=600, objective="sales")
    handle = await ns_client.start_workflow(CampaignWorkflow.run, inp, id=f"{tenant}:campaign:{inp.campaign_key}",
                                            task_queue=WORKFLOWS_QUEUE)

    def waiting() -> Awaitable[ApprovalsView]:
        return open_request(handle, CampaignWorkflow, "creative-1", "campaign-waiting-for-approval")

    async def then() -> CampaignResult:
        receipt = await handle.execute_update(
            CampaignWorkflow.decide,
            signed(DecisionInput(request_id="creative-1", decision="edit", edits={"budget_usd": 900},
                                 by=client_decider(tenant)), handle.id),
            result_type=DecisionReceipt)
        assert receipt.closed and receipt.decided_by == f"owner@{tenant}"
        return await handle.result()

    result = await restart_at(ours, tmp_path, waiting, then)
    assert result.status == "launched" and result.budget_usd == 900
    assert {c.channel for c in result.launched} == {"google_ads", "meta_ads"}
    launches = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'upsert_ads_campaign'",
                              handle.id)
    assert len(launches) == 2
    await record_history(handle, "campaign")


async def test_an_order_in_review_survives_a_restart_and_is_captured(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool, localstripe_url: str
) -> None:
    tenant = unique("shop")
    intent = await authorized_payment(localstripe_url, tenant, 90000)
    inp = OrderInput(tenant_id=tenant, order_key=unique("web"), total=900.0, customer_email="ann@example.com",
                     lines=[OrderLine(sku="SOUR-1", quantity=2, unit_price=450.0, title="Sourdough")],
                     billing_country="US", shipping_country="US", payment_intent_id=intent)
    handle = await ns_client.start_workflow(OrderProcessingWorkflow.run, inp, id=f"{tenant}:order:{inp.order_key}",
                                            task_queue=WORKFLOWS_QUEUE)

    async def waiting() -> ApprovalsView:
        return await open_request(handle, OrderProcessingWorkflow, "review")

    async def then() -> OrderResult:
        await handle.execute_update(
            OrderProcessingWorkflow.decide,
            signed(DecisionInput(request_id="review", decision="approve", by=client_decider(tenant)), handle.id),
            result_type=DecisionReceipt)
        return await handle.result()

    result = await restart_at(ours, tmp_path, waiting, then)
    assert result.status == "accepted" and result.reviewed
    assert await payment_status(localstripe_url, intent) == "succeeded"
    assert await db.fetchval("SELECT status FROM orders WHERE workflow_id = $1", handle.id) == "accepted"
    await record_history(handle, "order")


async def test_a_post_waiting_for_its_review_survives_a_restart_and_is_published_at_its_time(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool, fixture_site: str
) -> None:
    tenant = unique("bakery")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, $1, 'growth', $2, 'active')",
                     tenant, f"owner@{tenant}.example")
    # Connected first: a post for a tenant with no WordPress site ends before its review.
    async with wordpress_site() as site:
        await connect_wordpress(db, tenant, site)
        inp = ContentInput(tenant_id=tenant, topic="Sourdough starter basics", keywords=["sourdough starter"],
                           website_url=f"{fixture_site}/")
        handle = await ns_client.start_workflow(SeoContentWorkflow.run, inp, id=f"{tenant}:seo-content:starter",
                                                task_queue=WORKFLOWS_QUEUE)

        def waiting() -> Awaitable[ApprovalsView]:
            return open_request(handle, SeoContentWorkflow, "post-1", "seo-content-waiting-for-review")

        publish_at = datetime.now(UTC) + timedelta(seconds=3)

        async def then() -> ContentResult:
            edits = {"title": "Sourdough starter, simply", "publish_at": publish_at.isoformat()}
            await handle.execute_update(
                SeoContentWorkflow.decide,
                signed(DecisionInput(request_id="post-1", decision="edit", edits=edits, by=client_decider(tenant)),
                       handle.id),
                result_type=DecisionReceipt)
            return await handle.result()

        result = await restart_at(ours, tmp_path, waiting, then)
    assert result.status == "published" and result.post is not None and result.post.title == "Sourdough starter, simply"
    assert result.wordpress is not None and site.posts[result.wordpress.post_id]["title"] == "Sourdough starter, simply"
    assert result.published_at is not None and result.published_at >= publish_at
    rows = await db.fetch("SELECT tool, arguments FROM outbox WHERE workflow_id = $1 AND tool LIKE '%wordpress%' "
                          "ORDER BY id", handle.id)
    assert [r["tool"] for r in rows] == ["create_wordpress_post", "publish_wordpress_post"]
    assert rows[0]["arguments"]["title"] == "Sourdough starter, simply"


async def test_a_dunning_survives_restarts_in_its_retry_timer_and_at_the_admin_decision(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool, localstripe_url: str
) -> None:
    tenant = unique("dun")
    await db.execute("""INSERT INTO tenants (id, name, plan, owner_email, status)
                        VALUES ($1, 'Dunned Co', 'starter', $2, 'active')""", tenant, f"owner@{tenant}.example")
    transport = stripe.HTTPXClient()
    sc = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": localstripe_url}, max_network_retries=0,
                             http_client=transport)
    try:
        inv = await failing_invoice(sc, tenant)
    finally:
        await transport.close_async()
    inp = DunningInput(tenant_id=tenant, invoice_id=inv, invoice_key=invoice_key(inv), amount_due=4900,
                       currency="eur", retry_schedule_seconds=[6], max_admin_retries=0)
    handle = await ns_client.start_workflow(DunningWorkflow.run, inp, id=f"{tenant}:dunning:{inp.invoice_key}",
                                            task_queue=WORKFLOWS_QUEUE)
    finance = Decider(sub="finance@bizosaas", roles=["finance"])

    # First restart: while the first retry's timer runs. Second: while the admin is asked.
    async def in_timer() -> None:
        progress = await handle.query(DunningWorkflow.progress, result_type=DunningProgress)
        assert progress.next_retry_at is not None and not progress.attempts, progress

    async def asked() -> ApprovalsView:
        return await open_request(handle, DunningWorkflow, "decision-1")

    await restart_at(ours, tmp_path, in_timer, lambda: assert_eventually(asked, timeout=60, interval=0.2))

    async def then() -> DunningResult:
        await handle.execute_update(
            DunningWorkflow.decide,
            signed(DecisionInput(request_id="decision-1", decision="approve", choice="write_off", by=finance), handle.id),
            result_type=DecisionReceipt)
        return await handle.result()

    result = await restart_at(ours, tmp_path, asked, then)
    assert result.status == "written_off" and [a.status for a in result.attempts] == ["open"]
    assert result.emails_sent == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool = 'send_email'",
                             handle.id) == 1
    await record_history(handle, "dunning")


async def test_a_versioned_worker_runs_workflows_once_its_build_is_current(
    ours: Settings, ns_client: Client, db: asyncpg.Pool, mcp_sandbox: str
) -> None:
    """Worker Versioning: workers of build ``v1`` of a deployment take work once an operator makes
    that build current with the ``temporal`` CLI; the run records the build that ran it."""
    from temporalio.common import VersioningBehavior

    from workflows.onboarding import OnboardingInput, OnboardingWorkflow

    versioned = ours.model_copy(update={"worker": ours.worker.model_copy(
        update={"deployment_name": "bizosaas", "build_id": "v1"})})
    tenant = unique("ver")
    async with platform_workers(ns_client, versioned, db, [WORKFLOWS_QUEUE, INTEGRATIONS_QUEUE]):
        async def current() -> None:
            proc = await run_temporal_cli(ours, "worker", "deployment", "set-current-version",
                                          "--deployment-name", "bizosaas", "--build-id", "v1", "--yes")
            assert proc.returncode == 0, proc.stdout + proc.stderr

        await assert_eventually(current, timeout=30, interval=0.5)  # once the workers have polled
        handle = await ns_client.start_workflow(
            OnboardingWorkflow.run, OnboardingInput(tenant_id=tenant, name="Versioned Co", owner_email="o@v.example"),
            id=f"{tenant}:onboarding:{tenant}", task_queue=WORKFLOWS_QUEUE)
        result = await handle.result()
    assert result.status == "active"
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    assert info.deployment_version.build_id == "v1" and info.deployment_version.deployment_name == "bizosaas"
    assert info.behavior == VersioningBehavior.AUTO_UPGRADE.value


async def test_a_campaign_canceled_while_launching_pauses_the_ad_it_launched(
    ours: Settings, ns_client: Client, db: asyncpg.Pool, mcp_sandbox: str
) -> None:
    """The cancel lands while the first ad's launch is asked for but not yet done (no worker
    polls the integrations queue yet): that launch completes, the ad is paused again, the
    second channel is never launched, and the campaign ends canceled."""
    tenant = unique("bakery")
    inp = CampaignInput(tenant_id=tenant, campaign_key=unique("spring"), goal="Sell more sourdough this spring",
                        channels=["google_ads", "meta_ads"], budget_usd=600, objective="sales")
    handle = await ns_client.start_workflow(CampaignWorkflow.run, inp, id=f"{tenant}:campaign:{inp.campaign_key}",
                                            task_queue=WORKFLOWS_QUEUE)
    async with platform_workers(ns_client, ours, db, [WORKFLOWS_QUEUE, AGENTS_QUEUE]):
        await assert_eventually(lambda: open_request(handle, CampaignWorkflow, "creative-1"), timeout=120)
        await handle.execute_update(
            CampaignWorkflow.decide,
            signed(DecisionInput(request_id="creative-1", decision="approve", by=client_decider(tenant)), handle.id),
            result_type=DecisionReceipt)

        async def launching() -> None:
            pending = (await handle.describe()).raw_description.pending_activities
            assert [p.activity_type.name for p in pending] == ["mcp.call_tool"], pending

        await assert_eventually(launching, timeout=30)
        await handle.cancel()
        async with platform_workers(ns_client, ours, db, [INTEGRATIONS_QUEUE]):
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
    assert isinstance(failed.value.cause, CancelledError)
    ads = await db.fetch("SELECT arguments, response, idempotency_key FROM outbox WHERE workflow_id = $1 "
                         "AND tool = 'upsert_ads_campaign' ORDER BY id", handle.id)
    assert [(a["idempotency_key"].rsplit(":", 2)[-2:], a["arguments"]["status"]) for a in ads] == [
        (["launch", "google_ads"], "active"), (["pause", "google_ads"], "paused")]
    launched_id = ads[0]["response"]["campaign_id"]
    assert ads[1]["arguments"]["campaign_id"] == launched_id and ads[1]["response"]["status"] == "paused"
    usage = await db.fetch("SELECT reported_to_lago_at FROM llm_usage WHERE workflow_id = $1 "
                           "OR starts_with(workflow_id, $1 || ':')", handle.id)
    assert usage and all(u["reported_to_lago_at"] is not None for u in usage)


async def test_a_social_calendar_waiting_for_the_client_survives_a_restart_then_publishes_and_withdraws(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool
) -> None:
    tenant = unique("bakery")
    now = datetime.now(UTC)
    inp = CalendarInput(tenant_id=tenant, key="week-1", engagement_for_hours=0, posts=[
        SlotInput(slot_id="due", at=now - timedelta(minutes=1), platforms=["x"], topic="Pumpkin bread"),
        SlotInput(slot_id="later", at=now + timedelta(days=2), platforms=["linkedin"], topic="Stollen")])
    handle = await ns_client.start_workflow(SocialCalendarWorkflow.run, inp, id=f"{tenant}:social-calendar:week-1",
                                            task_queue=WORKFLOWS_QUEUE)

    async def then() -> Any:
        await handle.execute_update(
            SocialCalendarWorkflow.decide,
            signed(DecisionInput(request_id="calendar", decision="approve", by=client_decider(tenant)), handle.id),
            result_type=DecisionReceipt)

        async def published() -> None:
            slots = await handle.query(SocialCalendarWorkflow.calendar, result_type=list[SlotView])
            assert [s.status for s in slots] == ["published", "scheduled"], slots

        await assert_eventually(published, timeout=60, interval=0.2)
        await handle.execute_update(SocialCalendarWorkflow.withdraw, WithdrawRequest(slot_id="later"))
        return await handle.result()

    result = await restart_at(ours, tmp_path, lambda: open_request(handle, SocialCalendarWorkflow, "calendar"), then)
    assert [s.status for s in result.slots] == ["published", "withdrawn"] and result.approval == "approved"
    rows = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1", handle.id)
    assert [r["arguments"]["platform"] for r in rows] == ["x"]


async def test_an_email_sequence_waiting_for_its_next_email_survives_a_restart_and_sends_it_once(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool
) -> None:
    tenant = await add_tenant(db, "leads")
    steps = [{"after_seconds": 0, "subject": "Welcome, {name}", "text": "Hi {name}."},
             {"after_seconds": 8, "subject": "Still there, {name}?", "text": "Hi {name}, a reply is all it takes."}]
    await db.execute("INSERT INTO tenant_settings (tenant_id, capability, settings, updated_by) "
                     "VALUES ($1, 'email-sequence', $2, 'test')", tenant, {"steps": steps})
    inp = EmailSequenceInput(tenant_id=tenant, email="ada@example.com", name="Ada", lead_key="ada")
    handle = await ns_client.start_workflow(EmailSequenceWorkflow.run, inp, id=f"{tenant}:email-sequence:ada",
                                            task_queue=WORKFLOWS_QUEUE)

    async def waiting() -> None:
        progress = await handle.query(EmailSequenceWorkflow.progress)
        assert (progress.stage, progress.sent, progress.next_step) == ("waiting", 1, 2), progress

    async def then() -> EmailSequenceResult:
        return await handle.result()

    result = await restart_at(ours, tmp_path, waiting, then)
    assert result.status == "completed" and [s.subject for s in result.sent] == ["Welcome, Ada", "Still there, Ada?"]
    rows = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'send_email' ORDER BY id",
                          handle.id)
    assert [r["arguments"]["subject"] for r in rows] == ["Welcome, Ada", "Still there, Ada?"]  # each once


async def test_a_payout_review_waiting_for_finance_survives_a_restart_and_pays_once(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool, localstripe_url: str,
    lago_url: str
) -> None:
    tenant, affiliate = await add_tenant(db, "referred"), unique("aff")
    transport = stripe.HTTPXClient()
    sc = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": localstripe_url}, max_network_retries=0,
                             http_client=transport)
    try:
        closed = (await sc.v1.accounts.create_async({"type": "express", "email": "old@aff.example"})).id
        account = (await sc.v1.accounts.create_async({"type": "express", "email": "pay@aff.example"})).id
        await db.execute("""INSERT INTO affiliates (id, name, email, payout_account, commission_percent, updated_by)
                            VALUES ($1, 'Aff', 'pay@aff.example', $2, 15, 'test')""", affiliate, closed)
        await db.execute("""INSERT INTO affiliate_referrals (tenant_id, affiliate_id, referred_at, updated_by)
                            VALUES ($1, $2, '2025-01-01T00:00:00Z', 'test')""", tenant, affiliate)
        invoice = await paid_invoice(lago_url, tenant, 40_000, "2025-08-14")  # 15 % -> 6,000
        handle = await ns_client.start_workflow(
            AffiliatePayoutWorkflow.run, AffiliatePayoutInput(quarter="2025-q3"), id="global:affiliate-payout:2025-q3",
            task_queue=WORKFLOWS_QUEUE)
        finance = Decider(sub="finance@bizosaas", roles=["finance"])

        async def asked() -> ApprovalsView:
            return await open_request(handle, AffiliatePayoutWorkflow, "payouts-2025-q3")

        async def then() -> AffiliatePayoutResult:
            # While finance decides, the affiliate's account is replaced: the payout goes to the new one.
            await db.execute("UPDATE affiliates SET payout_account = $2 WHERE id = $1", affiliate, account)
            await handle.execute_update(
                AffiliatePayoutWorkflow.decide,
                signed(DecisionInput(request_id="payouts-2025-q3", decision="approve", by=finance), handle.id),
                result_type=DecisionReceipt)
            return await handle.result()

        result = await restart_at(ours, tmp_path, asked, then)
        assert [(p.affiliate_id, p.amount_cents) for p in result.paid if p.affiliate_id == affiliate] == [
            (affiliate, 6_000)]
        transfers = (await sc.v1.transfers.list_async({"destination": account})).data
        assert [(t.amount, t.currency) for t in transfers] == [(6_000, "usd")]  # once
        assert (await sc.v1.transfers.list_async({"destination": closed})).data == []
        assert await db.fetchval("SELECT payout_id FROM affiliate_commissions WHERE lago_invoice_id = $1",
                                 invoice) == result.paid[[p.affiliate_id for p in result.paid].index(affiliate)].payout_id
    finally:
        await transport.close_async()


async def test_a_cart_waiting_for_its_next_reminder_survives_a_restart_and_the_checkout_ends_it(
    ours: Settings, ns_client: Client, side_workers: None, tmp_path: Path, db: asyncpg.Pool
) -> None:
    tenant = await add_tenant(db, "cart")
    steps = [{"after_seconds": 0, "text": "Your cart: {items}"}, {"after_seconds": 3600, "text": "Still there?"}]
    await db.execute("INSERT INTO tenant_settings (tenant_id, capability, settings, updated_by) "
                     "VALUES ($1, 'cart-recovery', $2, 'test')", tenant, {"steps": steps})
    inp = CartRecoveryInput(tenant_id=tenant, checkout_token="c0ffee", email="ada@example.com", total="12.00")
    handle = await ns_client.start_workflow(CartRecoveryWorkflow.run, inp, id=f"{tenant}:cart-recovery:checkout-c0ffee",
                                            task_queue=WORKFLOWS_QUEUE)

    async def waiting() -> None:
        progress = await handle.query(CartRecoveryWorkflow.progress)
        assert (progress.stage, progress.sent, progress.next_step) == ("waiting", 1, 2), progress

    async def then() -> CartRecoveryResult:
        await assert_eventually(waiting, timeout=30, interval=0.2)  # the new worker has the workflow at its wait
        await handle.signal(CHECKOUT_SIGNAL, {"token": "c0ffee", "completed_at": "2026-11-27T10:00:00Z"})
        return await handle.result()

    result = await restart_at(ours, tmp_path, waiting, then)
    assert (result.status, result.recovered_total, len(result.sent)) == ("recovered", "12.00", 1)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1", handle.id) == 1  # sent once
