"""Dunning: the retry schedule, the customer emails and the admin's decision on the
time-skipping server (a week passes in milliseconds; Stripe, the email tool, the tenant and
audit activities are fakes under the real names); then the Stripe webhooks through the API on
the dev server (signed with stripe's own helper), and one ``invoice.payment_failed`` pushed by
localstripe itself to the API's webhook URL."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest
    import stripe
    from temporalio.client import Client, WorkflowHandle
    from temporalio.service import RPCError, RPCStatusCode
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import Notified, Notify
    from activities.mail import MailActivities
    from activities.notify import Deliver, Delivered
    from activities.stripe import InvoicePayment, PayInvoice
    from activities.mcp import CallToolRequest, CallToolResult
    from activities.tenants import AuditEntry, AuditReceipt, SetTenantStatus, TenantRecord
    from hitl.protocol import ApprovalsView, Decider, DecisionInput
    from tests.conftest import Tokens
    from tests.support import STRIPE_TEST_KEY, assert_eventually, signed, unique
    from tests.test_approvals_timeskip import verifier
    from workers.main import WORKFLOW_FAILURE_TYPES
    from core.settings import Settings
    from workflows.dunning import DAY, DunningInput, DunningProgress, DunningResult, DunningWorkflow, invoice_key
    from core.names import INTEGRATIONS_QUEUE

ADMIN = Decider(sub="finance@bizosaas", roles=["finance"])
CUSTOMER = "billing@acme.example"


def new_invoice_id() -> str:
    """A Stripe-like, case-sensitive invoice id."""
    return "in_1Dun" + uuid.uuid4().hex[:10] + "XyZ"


# --- time-skipping: the schedule, the emails, the decision -------------------------------------

class Fakes:
    """The activities a dunning runs, recording what they were asked (and when, in workflow time)."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.payments: list[tuple[PayInvoice, datetime]] = []
        self.emails: list[CallToolRequest] = []
        self.statuses: list[SetTenantStatus] = []
        self.audited: dict[str, AuditEntry] = {}

    @activity.defn(name="stripe.pay_invoice")
    async def pay_invoice(self, req: PayInvoice) -> InvoicePayment:
        if all(p.idempotency_key != req.idempotency_key for p, _ in self.payments):
            self.payments.append((req, activity.info().scheduled_time))
        return InvoicePayment(invoice_id=req.invoice_id, status="open", paid=False, amount_due=4900, currency="usd",
                              failure_code="card_declined")

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        if all(e.idempotency_key != req.idempotency_key for e in self.emails):
            self.emails.append(req)
        return CallToolResult(server="sandbox", tool=req.tool, content={
            "message_id": f"msg-{len(self.emails)}", "status": "queued", "channel": "email", "to": req.arguments["to"]})

    @activity.defn(name="tenant.set_status")
    async def set_status(self, req: SetTenantStatus) -> TenantRecord:
        self.statuses.append(req)
        return TenantRecord(tenant_id=req.tenant_id, name="Acme", plan="starter", status=req.status,
                            created_at=datetime(2026, 1, 1), created=False)

    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        written = e.idempotency_key not in self.audited
        self.audited.setdefault(e.idempotency_key, e)
        return AuditReceipt(audit_id=len(self.audited), written=written)

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        return Notified(notification_id=1, created=True)

    @activity.defn(name="notifications.deliver")
    async def deliver(self, d: Deliver) -> Delivered:
        return Delivered(sent=1)


@pytest.fixture
async def env(time_skipping_env: WorkflowEnvironment):  # noqa: ANN201
    return time_skipping_env


@pytest.fixture
async def fakes(env: WorkflowEnvironment, task_queue: str):  # noqa: ANN201
    rec = Fakes(unique("acme"))
    acts = [rec.pay_invoice, rec.call_tool, rec.set_status, rec.audit, rec.notify, rec.deliver]
    async with Worker(env.client, task_queue=task_queue, workflows=[DunningWorkflow],
                      activities=[*acts, verifier().verify_decision, MailActivities().render],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES), \
            Worker(env.client, task_queue=INTEGRATIONS_QUEUE, activities=acts):
        yield rec


async def start(env: WorkflowEnvironment, fakes: Fakes, task_queue: str, **kw: Any) -> WorkflowHandle:
    inv = new_invoice_id()
    inp = DunningInput(tenant_id=fakes.tenant, invoice_id=inv, invoice_key=invoice_key(inv), amount_due=4900,
                       currency="usd", customer_email=CUSTOMER, **kw)
    return await env.client.start_workflow(DunningWorkflow.run, inp, id=f"{fakes.tenant}:dunning:{inp.invoice_key}",
                                           task_queue=task_queue)


async def progress(handle: WorkflowHandle) -> DunningProgress:
    return await handle.query(DunningWorkflow.progress, result_type=DunningProgress)


async def asked(handle: WorkflowHandle, request_id: str) -> ApprovalsView:
    async def check() -> ApprovalsView:
        view = await handle.query(DunningWorkflow.approvals, result_type=ApprovalsView)
        assert view.open is not None and view.open.request.request_id == request_id, view
        return view

    return await assert_eventually(check)


async def decide(env: WorkflowEnvironment, handle: WorkflowHandle, request_id: str, choice: str) -> None:
    """An admin's choice as the signed ``decide`` signal (signed at the server's time)."""
    d = DecisionInput(request_id=request_id, decision="approve", choice=choice, by=ADMIN)
    await handle.signal(DunningWorkflow.decide_signal, signed(d, handle.id, await env.get_current_time()))  # type: ignore[arg-type]


async def three_failed_retries(env: WorkflowEnvironment, fakes: Fakes, handle: WorkflowHandle) -> None:
    """A week and a day pass: retries at day 1, 3 and 7, an email after each, then the admin is asked."""
    await env.sleep(timedelta(days=7, hours=12))
    view = await asked(handle, "decision-1")
    started = (await handle.describe()).start_time
    days = [round((at - started) / timedelta(days=1), 2) for _, at in fakes.payments]
    assert days == [1.0, 3.0, 7.0]
    assert [p.idempotency_key for p, _ in fakes.payments] == [f"{handle.id}:stripe.pay_invoice:{n}" for n in (1, 2, 3)]
    assert [(e.tool, e.arguments["to"], e.idempotency_key) for e in fakes.emails] == [
        ("send_email", [CUSTOMER], f"{handle.id}:email:attempt-{n}") for n in (1, 2, 3)]
    # Rendered from activities/templates/email/dunning_payment_failed.*: text and HTML.
    first, last = fakes.emails[0].arguments, fakes.emails[-1].arguments
    assert first["subject"] == f"Payment failed for invoice {fakes.payments[0][0].invoice_id}"
    assert "We could not collect 49.00 USD" in first["text"] and "(attempt 1)" in first["text"]
    assert "try again in a few days" in first["text"] and "next steps" in last["text"]
    assert "<strong>49.00 USD</strong>" in first["html"]
    assert view.open.audience == "admin" and view.open.roles == ["admin", "finance", "super_admin"]
    assert view.open.request.choices == ["retry", "write_off", "suspend"]
    state = await progress(handle)
    assert state.stage == "awaiting_admin_decision" and state.attempts == 3 and state.pending_request == "decision-1"


async def test_three_retries_an_email_each_then_the_admin_writes_it_off(
    env: WorkflowEnvironment, fakes: Fakes, task_queue: str
) -> None:
    handle = await start(env, fakes, task_queue)
    await three_failed_retries(env, fakes, handle)
    await decide(env, handle, "decision-1", "write_off")
    result = await handle.result()
    assert result.status == "written_off" and result.emails_sent == 3 and len(result.attempts) == 3
    assert [(d.decided_by, d.choice) for d in result.decisions] == [("finance@bizosaas", "write_off")]
    assert fakes.statuses == []
    entry = fakes.audited[f"{handle.id}:dunning.written_off"]
    assert entry.actor == "finance@bizosaas" and entry.details["invoice_id"] == result.invoice_id
    assert f"{handle.id}:approval:decision-1:finance@bizosaas" in fakes.audited  # the decision itself


async def test_the_admin_retries_once_more_then_suspends_the_tenant(
    env: WorkflowEnvironment, fakes: Fakes, task_queue: str
) -> None:
    handle = await start(env, fakes, task_queue, max_admin_retries=1)
    await three_failed_retries(env, fakes, handle)
    await decide(env, handle, "decision-1", "retry")
    view = await asked(handle, "decision-2")  # the retry failed: asked again, retry no longer offered
    assert view.open.request.choices == ["write_off", "suspend"]
    assert len(fakes.payments) == 4 and len(fakes.emails) == 4
    await decide(env, handle, "decision-2", "suspend")
    result = await handle.result()
    assert result.status == "suspended" and [a.by for a in result.attempts] == ["schedule"] * 3 + ["admin"]
    assert fakes.statuses == [SetTenantStatus(tenant_id=fakes.tenant, status="suspended")]
    assert f"{handle.id}:dunning.suspended" in fakes.audited


@pytest.mark.parametrize("when", ["between retries", "while the admin is asked"])
async def test_invoice_paid_ends_it_with_no_further_retries(
    env: WorkflowEnvironment, fakes: Fakes, task_queue: str, when: str
) -> None:
    handle = await start(env, fakes, task_queue)
    if when == "between retries":
        await env.sleep(timedelta(days=2))
        assert (await progress(handle)).attempts == 1
    else:
        await three_failed_retries(env, fakes, handle)
    tried = len(fakes.payments)
    await handle.signal(DunningWorkflow.invoice_paid, {"id": "evt_paid_1", "type": "invoice.paid",
                                                       "data": {"object": {"id": (await progress(handle)).invoice_id}}})
    result = await handle.result()
    assert result.status == "paid" and result.paid_by == "event" and result.paid_event_id == "evt_paid_1"
    assert len(fakes.payments) == tried and len(result.attempts) == tried and result.decisions == []
    view = await handle.query(DunningWorkflow.approvals, result_type=ApprovalsView)
    assert view.open is None  # an open admin request is withdrawn


# --- dev server: Stripe webhooks through the API ---------------------------------------------

def stripe_event(event_type: str, tenant: str, invoice_id: str, **invoice: Any) -> str:
    return json.dumps({
        "id": "evt_" + uuid.uuid4().hex[:16], "object": "event", "type": event_type, "created": int(time.time()),
        "data": {"object": {"id": invoice_id, "object": "invoice", "customer_email": f"billing@{tenant}.example",
                            "amount_due": 4900, "currency": "usd", "metadata": {"tenant_id": tenant}, **invoice}},
    })


async def deliver(http: httpx.AsyncClient, settings: Settings, payload: str) -> httpx.Response:
    header = stripe.WebhookSignature.generate_signature_header(payload, settings.stripe.webhook_secret.get_secret_value())
    return await http.post("/v1/webhooks/stripe", content=payload, headers={"stripe-signature": header})


async def test_stripe_payment_failed_starts_one_dunning_and_invoice_paid_ends_it(
    http: httpx.AsyncClient, settings: Settings, client: Client, tokens: Tokens
) -> None:
    tenant, inv = unique("dun"), new_invoice_id()
    wf_id = f"{tenant}:dunning:{invoice_key(inv)}"
    failed = stripe_event("invoice.payment_failed", tenant, inv)
    r = await deliver(http, settings, failed)
    assert r.status_code == 202 and r.json()["outcome"] == "started" and r.json()["workflow_id"] == wf_id, r.text
    again = await deliver(http, settings, failed)  # a redelivery: same workflow, nothing new
    assert again.status_code == 200 and again.json()["workflow_id"] == wf_id and again.json()["outcome"] == "duplicate"

    async def waiting() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "RUNNING" and view["progress"]["stage"] == "waiting_to_retry", view
        return view

    view = await assert_eventually(waiting, timeout=30)
    assert view["capability"] == "dunning" and view["tenant_id"] == tenant and view["progress"]["invoice_id"] == inv
    next_retry = datetime.fromisoformat(view["progress"]["next_retry_at"])
    created = json.loads(failed)["created"]
    assert abs(next_retry.timestamp() - (created + DAY)) < 2  # day 1 after the failure

    async def one() -> None:
        count = await client.count_workflows(f"BizTenantId = '{tenant}' AND BizCapability = 'dunning'")
        assert count.count == 1

    await assert_eventually(one, timeout=10)

    r = await deliver(http, settings, stripe_event("invoice.paid", tenant, inv, status="paid"))
    assert r.status_code == 202 and r.json()["outcome"] == "signalled" and r.json()["workflow_id"] == wf_id, r.text
    result = await client.get_workflow_handle(wf_id, result_type=DunningResult).result()
    assert result.status == "paid" and result.paid_by == "event" and result.attempts == []
    # invoice.paid delivered again after it ended: nothing starts.
    r = await deliver(http, settings, stripe_event("invoice.paid", tenant, inv, status="paid"))
    assert r.status_code == 200 and r.json()["outcome"] == "duplicate"


async def test_invoice_paid_before_payment_failed_is_harmless(
    http: httpx.AsyncClient, settings: Settings, client: Client
) -> None:
    tenant, inv = unique("dun"), new_invoice_id()
    r = await deliver(http, settings, stripe_event("invoice.paid", tenant, inv, status="paid"))
    assert r.status_code == 202 and r.json()["outcome"] == "signalled", r.text
    result = await client.get_workflow_handle(r.json()["workflow_id"], result_type=DunningResult).result()
    assert result.status == "paid" and result.attempts == [] and result.emails_sent == 0
    r = await deliver(http, settings, stripe_event("invoice.payment_failed", tenant, inv))
    assert r.status_code == 200 and r.json()["outcome"] == "duplicate"
    # An invoice that names no tenant is refused (400), nothing started.
    payload = json.dumps({"id": "evt_x", "type": "invoice.payment_failed", "data": {"object": {"id": inv}}})
    assert (await deliver(http, settings, payload)).status_code == 400


# --- localstripe: the real activities, and an event it pushes itself ----------------------------

# localstripe fails a SEPA debit from this IBAN asynchronously, and that is when it emits
# invoice.payment_failed (a card declined at once emits nothing when an invoice is paid).
FAILING_IBAN = "DE62370400440532013001"


async def failing_invoice(sc: stripe.StripeClient, tenant: str) -> str:
    """An open invoice of the tenant whose payments fail; its id. localstripe invoices need a
    subscription (here a trial, so it bills nothing itself) and drop the metadata given at
    creation, so the tenant is set by an update."""
    pm = await sc.v1.payment_methods.create_async({"type": "sepa_debit", "sepa_debit": {"iban": FAILING_IBAN}})
    customer = await sc.v1.customers.create_async({
        "email": f"billing@{tenant}.example", "metadata": {"tenant_id": tenant},
        "invoice_settings": {"default_payment_method": pm.id}})
    plan = await sc.v1.plans.create_async(
        {"amount": 4900, "currency": "eur", "interval": "month", "product": {"name": "BizOSaaS Growth"}})
    sub = await sc.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"plan": plan.id}], "trial_period_days": 14})
    invoice = await sc.v1.invoices.create_async({"customer": customer.id, "subscription": sub.id})
    await sc.v1.invoices.update_async(invoice.id, {"metadata": {"tenant_id": tenant}})
    return invoice.id


@pytest.fixture
async def sc(localstripe_url: str):  # noqa: ANN201
    transport = stripe.HTTPXClient()
    yield stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": localstripe_url}, max_network_retries=0,
                              http_client=transport)
    await transport.close_async()


async def active_tenant(db: asyncpg.Pool) -> str:
    tenant = unique("dun")
    await db.execute("""INSERT INTO tenants (id, name, plan, owner_email, status)
                        VALUES ($1, 'Dunned Co', 'starter', $2, 'active')""", tenant, f"owner@{tenant}.example")
    return tenant


async def test_real_retry_through_stripe_email_and_the_admin_suspends_through_the_api(
    http: httpx.AsyncClient, client: Client, sc: stripe.StripeClient, db: asyncpg.Pool, tokens: Tokens
) -> None:
    tenant = await active_tenant(db)
    inv = await failing_invoice(sc, tenant)
    r = await http.post("/v1/workflows/dunning", headers=tokens.admin(), json={
        "tenant_id": tenant, "invoice_id": inv, "invoice_key": invoice_key(inv), "amount_due": 4900,
        "currency": "eur", "retry_schedule_seconds": [1], "max_admin_retries": 0})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"{tenant}:dunning:{invoice_key(inv)}"

    async def asked_admin() -> dict[str, Any]:
        page = (await http.get("/v1/admin/approvals", params={"tenant_id": tenant}, headers=tokens.admin())).json()
        mine = [a for a in page["items"] if a["workflow_id"] == wf_id]
        assert mine, page
        return mine[0]

    action = await assert_eventually(asked_admin, timeout=60, interval=0.2)
    assert action["choices"] == ["write_off", "suspend"]  # no admin retries allowed here
    # The retry went to Stripe (localstripe: the invoice stays open) and the customer was told,
    # at the address Stripe has on the invoice.
    email = await db.fetchrow("SELECT arguments, idempotency_key FROM outbox WHERE workflow_id = $1 AND tool = "
                              "'send_email'", wf_id)
    assert email["arguments"]["to"] == [f"billing@{tenant}.example"] and inv in email["arguments"]["subject"]
    assert email["idempotency_key"] == f"{wf_id}:email:attempt-1"
    assert (await sc.v1.invoices.retrieve_async(inv)).status == "open"

    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.admin(),
                        json={"decision": "approve", "choice": "suspend"})
    assert r.status_code == 200, r.text
    result = await client.get_workflow_handle(wf_id, result_type=DunningResult).result()
    assert result.status == "suspended" and [a.status for a in result.attempts] == ["open"]
    assert result.attempts[0].emailed and result.emails_sent == 1
    assert await db.fetchval("SELECT status FROM tenants WHERE id = $1", tenant) == "suspended"
    assert await db.fetchval("SELECT actor FROM audit_log WHERE idempotency_key = $1",
                             f"{wf_id}:dunning.suspended") == "admin@bizosaas"


async def test_localstripe_pushes_invoice_payment_failed_and_a_dunning_starts(
    http: httpx.AsyncClient, settings: Settings, client: Client, localstripe_url: str, db: asyncpg.Pool,
    sc: stripe.StripeClient
) -> None:
    tenant = await active_tenant(db)
    config = f"{localstripe_url}/_config/webhooks/bizosaas-{tenant}"
    hook = {"url": f"{http.base_url}/v1/webhooks/stripe", "secret": settings.stripe.webhook_secret.get_secret_value()}
    async with httpx.AsyncClient(timeout=10) as raw:
        # localstripe signs what it pushes with this secret (t = the event's creation time, v1 = HMAC).
        r = await raw.post(config, json={**hook, "events": ["invoice.payment_failed"]})
        assert r.status_code == 200, r.text
        try:
            inv = await failing_invoice(sc, tenant)
            assert (await sc.v1.invoices.pay_async(inv)).status == "open"
            handle = client.get_workflow_handle(f"{tenant}:dunning:{invoice_key(inv)}")

            async def started() -> DunningProgress:
                try:
                    state = await progress(handle)
                except RPCError as exc:  # not started yet: localstripe delivers after about a second
                    assert exc.status != RPCStatusCode.NOT_FOUND, exc
                    raise
                assert state.stage == "waiting_to_retry", state
                return state

            state = await assert_eventually(started, timeout=30, interval=0.2)
            assert state.invoice_id == inv and state.attempts == 0
            memo = await (await handle.describe()).memo_value("trigger")
            assert memo["source"] == "stripe" and memo["event_type"] == "invoice.payment_failed"
            assert memo["event_id"].startswith("evt_")
            await handle.terminate("test over")
        finally:
            await raw.post(config, json={**hook, "events": []})  # localstripe has no way to delete one


async def test_the_dunned_client_cannot_cancel_its_dunning_but_finance_can(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = await active_tenant(db)
    inv = new_invoice_id()
    r = await http.post("/v1/workflows/dunning", headers=tokens.admin(), json={
        "tenant_id": tenant, "invoice_id": inv, "invoice_key": invoice_key(inv), "amount_due": 4900,
        "retry_schedule_seconds": [86400]})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    assert "finance" in r.text
    view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
    assert view["status"] == "RUNNING"
    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.finance())
    assert r.status_code == 202, r.text
