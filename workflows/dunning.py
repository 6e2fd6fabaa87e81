"""Dunning: an invoice whose payment failed is retried on a backoff schedule, the customer is
told each time, and when the last retry fails an admin decides what happens to it.

1. Stripe ``invoice.payment_failed`` starts it (trigger table). Retries at day 1, 3 and 7 after
   the failure (``retry_schedule_seconds``; durable timers), each one a Stripe collection
   attempt (``stripe.pay_invoice``, idempotency key from the workflow id and the attempt).
2. After each failed retry the customer gets an email through the ``send_email`` tool (routed
   by the MCP registry; idempotency key per attempt).
3. After the last failed retry an admin (admin, finance or super_admin; the Approval Hub)
   approves one course of action: ``retry`` (one more attempt, then they are asked again; at
   most ``max_admin_retries`` times, after which only the other two are offered),
   ``write_off`` (recorded in the audit log) or ``suspend`` (the tenant's status becomes
   ``suspended``, also audited). Reminder after 24 h; after 72 h the request is marked
   escalated and waits on.
4. Stripe ``invoice.paid`` for the same invoice reaches it as the ``invoice_paid`` signal
   (signal-with-start): whenever it arrives (before the first retry, between retries, while
   the admin is asked, or even before ``invoice.payment_failed``) the workflow stops and
   completes as ``paid``. An open admin request is withdrawn.

Workflow id: ``{tenant_id}:dunning:{invoice_key}``. Stripe invoice ids are case-sensitive
(``in_1MtHbELkdIwHu7ix``), business keys are lower-case slugs, so :func:`invoice_key` maps one to
the other reversibly: ``_`` becomes ``--`` and an upper-case letter ``-`` and its lower case
(``in_1MtHbE`` → ``in--1-mt-hb-e``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.stripe import INVOICE_ID_PATTERN, InvoicePayment, PayInvoice, StripeActivities
    from activities.mail import MailActivities, RenderEmail
    from activities.mcp.tools import SendEmail
    from workflows.tools import call_tool
    from activities.tenants import AuditActivities, AuditEntry, SetTenantStatus, TenantActivities
    from hitl.approvals import MEMO_KEY, HumanDecisions
    from hitl.protocol import ApprovalOutcome, ApprovalRequest, DecisionRecord
    from core.activity import raise_if_cancelled, run_activity
    from core.names import APPROVAL_AUDIENCE, APPROVAL_DUE_AT, APPROVAL_ROLE, PENDING_APPROVAL, SLUG_PATTERN
    from workflows.stages import Stages
    from workflows.capability import Capability, Event, InvalidEvent, Trigger

NAME = "dunning"
PAID_SIGNAL = "invoice_paid"

Status = Literal["paid", "written_off", "suspended", "void"]
Choice = Literal["retry", "write_off", "suspend"]
Stage = Literal["started", "waiting_to_retry", "retrying", "notifying_customer", "awaiting_admin_decision",
                "writing_off", "suspending", "completed"]

DAY = 24 * 3600
DEFAULT_RETRY_SCHEDULE = [1 * DAY, 3 * DAY, 7 * DAY]  # seconds after the failure
MAX_RETRY_OFFSET = 90 * DAY
ADMIN_ROLES = ["admin", "finance", "super_admin"]
CHOICES: list[Choice] = ["retry", "write_off", "suspend"]
EMAIL_TEMPLATE = "dunning_payment_failed"  # activities/templates/email/
# The workflow.patched id of the customer's email rendered from its template (mail.render).
EMAIL_TEMPLATES = "dunning-email-templates"
REMIND_AFTER = timedelta(hours=24)
ESCALATE_AFTER = timedelta(hours=72)  # then marked escalated; the request waits for a person


def _legacy_email(inp: "DunningInput", email: str, amount: str, attempt: int, final: bool) -> SendEmail:
    """The customer's email as runs from before templates sent it (they replay and go on with it)."""
    later = ("We will contact you about the next steps." if final else
             "We will try again in a few days; please check your payment method.")
    return SendEmail(to=[email], subject=f"Payment failed for invoice {inp.invoice_id}",
                     text=f"We could not collect {amount} for invoice {inp.invoice_id} (attempt {attempt}). {later}")


def invoice_key(invoice_id: str) -> str:
    """The business key of a Stripe invoice id: reversible, a lower-case slug."""
    out = []
    for c in invoice_id:
        if c == "_":
            out.append("--")
        elif "A" <= c <= "Z":
            out.append("-" + c.lower())
        else:
            out.append(c)
    return "".join(out)


class DunningInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    invoice_id: Annotated[str, msgspec.Meta(pattern=INVOICE_ID_PATTERN)]
    invoice_key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]  # invoice_key(invoice_id): the id's key
    amount_due: Annotated[int, msgspec.Meta(ge=0)] = 0  # the currency's smallest unit
    currency: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{3}$")] = "usd"
    # Personal data: kept in the input (workflow history), never in search attributes. None:
    # the address Stripe has on the invoice, as the first retry answers it.
    customer_email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    failed_at: datetime | None = None  # the failure (the event's time); the schedule counts from it
    retry_schedule_seconds: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRY_OFFSET)]], msgspec.Meta(max_length=10)
    ] = msgspec.field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    max_admin_retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    event_id: str | None = None  # the Stripe event that started it
    requested_by: str = "system"

    def __post_init__(self) -> None:
        if self.invoice_key != invoice_key(self.invoice_id):
            raise ValueError(f"invoice_key must be {invoice_key(self.invoice_id)!r} for {self.invoice_id!r}")
        if self.retry_schedule_seconds != sorted(self.retry_schedule_seconds):
            raise ValueError("retry_schedule_seconds must be in increasing order")


class InvoicePaidEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The ``invoice_paid`` signal: the Stripe event as the trigger table passes it on."""

    id: Any = None  # the Stripe event id
    type: Any = None
    data: dict[str, Any] = {}


MAX_TIMESTAMP = 253402300800  # 10000-01-01: past any datetime


def stripe_invoice(event: Event) -> tuple[str, str, DunningInput]:
    """Stripe ``invoice.payment_failed`` (starts dunning) and ``invoice.paid`` (signals it, or
    starts it already paid when it comes first): keyed by the invoice id (:func:`invoice_key`),
    the tenant from the invoice's ``metadata.tenant_id``."""
    if event.tenant_id is None:
        raise InvalidEvent("the invoice names no tenant (metadata.tenant_id)")
    data = event.payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise InvalidEvent("the event has no invoice")
    created = event.payload.get("created")
    if isinstance(created, int) and not 0 <= created < MAX_TIMESTAMP:
        raise InvalidEvent("the event's created time is out of range")
    try:
        inp = msgspec.convert({
            "tenant_id": event.tenant_id, "invoice_id": obj["id"], "invoice_key": invoice_key(obj["id"]),
            "amount_due": obj.get("amount_due") or 0, "currency": str(obj.get("currency") or "usd").lower(),
            "customer_email": obj.get("customer_email") or None,
            "failed_at": datetime.fromtimestamp(created, UTC)
            if event.type == "invoice.payment_failed" and isinstance(created, int) else None,
            "event_id": event.id, "requested_by": event.sender,
        }, DunningInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invoice: {exc}") from None
    return inp.tenant_id, inp.invoice_key, inp


class PaymentAttempt(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    at: datetime
    paid: bool
    status: str
    failure_code: str | None = None
    by: str = "schedule"  # schedule | admin
    emailed: bool = False


class DunningResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    invoice_id: str
    status: Status
    attempts: list[PaymentAttempt] = []
    emails_sent: int = 0
    decisions: list[DecisionRecord] = []
    paid_by: Literal["retry", "event"] | None = None
    paid_event_id: str | None = None


class DunningProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    invoice_id: str | None = None
    attempts: int = 0
    next_retry_at: datetime | None = None
    paid: bool = False
    pending_request: str | None = None
    updated_at: datetime | None = None


@workflow.defn(name="Dunning")
class DunningWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._invoice_id: str | None = None
        self._paid_event: InvoicePaidEvent | None = None
        self._attempts: list[PaymentAttempt] = []
        self._next_retry_at: datetime | None = None
        self._emails = 0
        self._decisions: list[DecisionRecord] = []

    @workflow.signal(name=PAID_SIGNAL)
    def invoice_paid(self, event: InvoicePaidEvent) -> None:
        obj = event.data.get("object") if isinstance(event.data, dict) else None
        paid_id = obj.get("id") if isinstance(obj, dict) else None
        if self._invoice_id is not None and paid_id is not None and paid_id != self._invoice_id:
            workflow.logger.warning("invoice_paid for %s ignored: this is %s", paid_id, self._invoice_id)
            return
        if self._paid_event is None:
            self._paid_event = event

    @workflow.run
    async def run(self, inp: DunningInput) -> DunningResult:
        self._invoice_id = inp.invoice_id
        result = await self._dun(inp)
        self._next_retry_at = None
        self._enter("completed", result.status)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _dun(self, inp: DunningInput) -> DunningResult:
        now = workflow.now()
        anchor = inp.failed_at if inp.failed_at is not None and inp.failed_at <= now else now
        email = inp.customer_email
        for n, offset in enumerate(inp.retry_schedule_seconds, 1):
            await self.stage("waiting_to_retry")
            self._next_retry_at = anchor + timedelta(seconds=offset)
            if await self._paid_before(self._next_retry_at):
                return self._result(inp, "paid")
            self._next_retry_at = None
            payment = await self._retry(inp, "schedule")
            if (ended := self._settled(inp, payment)) is not None:
                return ended
            email = email or (payment.customer_email if payment else None)
            await self._tell_customer(inp, email, final=n == len(inp.retry_schedule_seconds))

        admin_retries = 0
        while True:
            await self.stage("awaiting_admin_decision")
            choices = [c for c in CHOICES if c != "retry" or admin_retries < inp.max_admin_retries]
            outcome = await self._ask_unless_paid(inp, choices)
            if outcome is None:
                return self._result(inp, "paid")
            self._decisions += outcome.decisions
            choice = outcome.choice if outcome.approved else None
            if choice == "retry":
                admin_retries += 1
                payment = await self._retry(inp, "admin")
                if (ended := self._settled(inp, payment)) is not None:
                    return ended
                email = email or (payment.customer_email if payment else None)
                await self._tell_customer(inp, email, final=True)
                continue
            if choice not in ("write_off", "suspend"):  # the request allows approve with a choice only
                raise ApplicationError(f"unexpected admin outcome {outcome.outcome!r}", type="DunningUnexpectedOutcome",
                                       non_retryable=True)
            decider = outcome.decisions[-1].decided_by if outcome.decisions else "system"
            if choice == "suspend":
                await self.stage("suspending", "admin_decided")
                await run_activity(
                    TenantActivities.set_status, SetTenantStatus(tenant_id=inp.tenant_id, status="suspended"),
                )
                await self._audit(inp, "dunning.suspended", decider)
                return self._result(inp, "suspended")
            await self.stage("writing_off", "admin_decided")
            await self._audit(inp, "dunning.written_off", decider)
            return self._result(inp, "written_off")

    def _settled(self, inp: DunningInput, payment: InvoicePayment | None) -> DunningResult | None:
        """The result when the attempt paid the invoice, Stripe says it is void or written off,
        or invoice.paid arrived meanwhile; None: still due."""
        if payment is not None and (payment.paid or payment.status in ("void", "uncollectible")):
            return self._result(inp, "paid" if payment.paid else "void")
        if self._paid_event is not None:
            return self._result(inp, "paid")
        return None

    async def _paid_before(self, when: datetime) -> bool:
        """Wait until ``when`` (a durable timer) or the paid signal; True if paid."""
        delay = when - workflow.now()
        if delay > timedelta(0) and self._paid_event is None:
            try:
                await workflow.wait_condition(lambda: self._paid_event is not None, timeout=delay)
            except TimeoutError:
                pass
        return self._paid_event is not None

    async def _retry(self, inp: DunningInput, by: str) -> InvoicePayment | None:
        """One collection attempt; None when Stripe refused it (recorded as a failed attempt)."""
        n = len(self._attempts) + 1
        await self.stage("retrying")
        wf_id = workflow.info().workflow_id
        payment: InvoicePayment | None = None
        try:
            payment = await run_activity(
                StripeActivities.pay_invoice,
                PayInvoice(invoice_id=inp.invoice_id, idempotency_key=f"{wf_id}:stripe.pay_invoice:{n}"),
            )
            code = payment.failure_code
        except ActivityError as err:  # a refusal (non-retryable): the admin will see it
            raise_if_cancelled(err)
            cause = err.cause
            code = cause.type if isinstance(cause, ApplicationError) and cause.type else "StripeError"
            workflow.logger.warning("payment attempt %d of %s refused: %s", n, inp.invoice_id, code)
        self._attempts.append(PaymentAttempt(
            attempt=n, at=workflow.now(), paid=bool(payment and payment.paid),
            status=payment.status if payment else "error", failure_code=None if payment and payment.paid else code,
            by=by))
        self._steps.append(f"attempt_{n}_{'paid' if payment and payment.paid else 'failed'}")
        return payment

    async def _tell_customer(self, inp: DunningInput, email: str | None, *, final: bool) -> None:
        attempt = self._attempts[-1]
        await self.stage("notifying_customer")
        if not email:
            self._steps.append(f"attempt_{attempt.attempt}_no_email_address")
            return
        amount = f"{inp.amount_due / 100:,.2f} {inp.currency.upper()}"
        try:
            if workflow.patched(EMAIL_TEMPLATES):
                mail = await run_activity(MailActivities.render, RenderEmail(template=EMAIL_TEMPLATE, data={
                    "invoice_id": inp.invoice_id, "amount": amount, "attempt": attempt.attempt, "final": final,
                    "tenant_id": inp.tenant_id}))
                message = SendEmail(to=[email], subject=mail.subject, text=mail.text, html=mail.html)
            else:  # a run from before the templates: the email it was sending then
                message = _legacy_email(inp, email, amount, attempt.attempt, final)
            await call_tool(inp.tenant_id, message, step=f"email:attempt-{attempt.attempt}")
        except (ActivityError, ApplicationError) as err:  # a refused email must not stop the dunning
            raise_if_cancelled(err)
            workflow.logger.warning("email for attempt %d not sent: %s", attempt.attempt, getattr(err, "cause", None) or err)
            self._steps.append(f"attempt_{attempt.attempt}_email_failed")
            return
        self._emails += 1
        self._attempts[-1] = msgspec.structs.replace(attempt, emailed=True)
        self._steps.append(f"attempt_{attempt.attempt}_emailed")

    async def _ask_unless_paid(self, inp: DunningInput, choices: list[str]) -> ApprovalOutcome | None:
        """The admin's decision, or None when the invoice was paid first (the request is withdrawn)."""
        n = len(self._approvals_closed) + 1
        last = self._attempts[-1] if self._attempts else None
        amount = f"{inp.amount_due / 100:,.2f} {inp.currency.upper()}"
        request = ApprovalRequest(
            request_id=f"decision-{n}", kind="dunning.decision",
            title=f"Invoice {inp.invoice_id} of {inp.tenant_id} unpaid after {len(self._attempts)} attempts"[:200],
            summary=f"{amount} still due; the last attempt failed ({last.failure_code if last else 'unknown'}). "
                    f"Choose: {', '.join(choices)}.",
            proposal={"invoice_id": inp.invoice_id, "amount_due": inp.amount_due, "currency": inp.currency,
                      "attempts": len(self._attempts), "last_failure": last.failure_code if last else None},
            allowed=["approve"], choices=choices, audience="admin", roles=ADMIN_ROLES,
            due_in_seconds=int(ESCALATE_AFTER.total_seconds()), remind_after_seconds=[int(REMIND_AFTER.total_seconds())],
            timeout_action="escalate", escalate_to_audience="admin", escalate_to_roles=ADMIN_ROLES,
        )
        asking = asyncio.create_task(self.ask(request))
        await workflow.wait_condition(lambda: asking.done() or self._paid_event is not None)
        if asking.done():
            return asking.result()
        asking.cancel()
        try:
            await asking
        except asyncio.CancelledError:
            pass
        self._withdraw_request()
        return None

    def _withdraw_request(self) -> None:
        """Close the open request (no outcome) and clear what the inboxes read, as ``ask`` does."""
        if self._approval is not None:
            self._approvals_closed.append(msgspec.structs.replace(
                self._approval, status="closed", closed_at=workflow.now()))
            self._approval = None
        workflow.upsert_search_attributes([
            PENDING_APPROVAL.value_set(False), APPROVAL_AUDIENCE.value_unset(), APPROVAL_ROLE.value_unset(),
            APPROVAL_DUE_AT.value_unset()])
        workflow.upsert_memo({MEMO_KEY: None})
        self._steps.append("admin_request_withdrawn")

    async def _audit(self, inp: DunningInput, action: str, actor: str) -> None:
        wf_id = workflow.info().workflow_id
        await run_activity(
            AuditActivities.write,
            AuditEntry(idempotency_key=f"{wf_id}:{action}", tenant_id=inp.tenant_id, actor=actor, action=action,
                       workflow_id=wf_id,
                       details={"invoice_id": inp.invoice_id, "amount_due": inp.amount_due, "currency": inp.currency,
                                "attempts": len(self._attempts)}),
        )

    def _result(self, inp: DunningInput, status: Status) -> DunningResult:
        paid_by = None
        if status == "paid":
            paid_by = "retry" if self._attempts and self._attempts[-1].paid else "event"
        event = self._paid_event
        return DunningResult(
            tenant_id=inp.tenant_id, invoice_id=inp.invoice_id, status=status, attempts=list(self._attempts),
            emails_sent=self._emails, decisions=list(self._decisions), paid_by=paid_by,
            paid_event_id=str(event.id) if paid_by == "event" and event and event.id is not None else None)

    @workflow.query(name="progress")
    def progress(self) -> DunningProgress:
        return DunningProgress(
            stage=self._stage, steps_done=list(self._steps), invoice_id=self._invoice_id,  # type: ignore[arg-type]
            attempts=len(self._attempts), next_retry_at=self._next_retry_at, paid=self._paid_event is not None,
            pending_request=self._approval.request.request_id if self._approval else None,
            updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=DunningWorkflow,
    input_type=DunningInput,
    business_key=lambda inp: inp.invoice_key,
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=frozenset({"super_admin", "admin", "finance"}),
    # Never the dunned client: only platform staff stop collecting a debt.
    cancel_roles=frozenset({"super_admin", "admin", "finance"}),
    decide_roles=frozenset(ADMIN_ROLES),
    summary="Dunning of a failed invoice: Stripe retries at day 1, 3 and 7, the customer emailed each time, "
            "then an admin retries, writes off or suspends the tenant; invoice.paid ends it. Usually started "
            "by the Stripe invoice.payment_failed webhook.",
    triggers=(
        Trigger(source="stripe", event_type="invoice.payment_failed", build=stripe_invoice),
        Trigger(source="stripe", event_type="invoice.paid", build=stripe_invoice, action="signal_with_start",
                signal=PAID_SIGNAL),
    ),
)
