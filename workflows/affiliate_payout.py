"""Affiliate Payout Review: each quarter, what the affiliates earned on the tenants they
referred, validated by finance, then paid (admin portal; the Approval Hub).

1. The referrals (``affiliates``, ``affiliate_referrals``: the admin API keeps them) and the
   referred tenants' paid Lago invoices issued up to the quarter's end (at most
   ``LOOKBACK_DAYS`` before it). An invoice earns its affiliate ``commission_percent`` of its
   amount before taxes (rounded down to the cent), once: an invoice a review already paid (the
   ``affiliate_commissions`` ledger) earns nothing again, whichever review it was. Invoices
   issued before the referral earn nothing.
2. :func:`earnings` (pure) adds them up per affiliate and currency. A payout is held when the
   affiliate is paused, has no Stripe connected account, or earned less than ``minimum_cents``;
   its invoices stay out of the ledger, so a later review pays them with that quarter's.
3. Finance decides (roles ``finance``; ``super_admin`` after 7 days, reminder after 2): approve,
   reject, or edit the proposal's ``hold`` list (affiliates not to pay this time) and approve.
4. Each approved payout is written to the ledger with its invoices, then transferred to the
   affiliate's connected account as it is when paying (one replaced while finance decided is the
   one paid) (Stripe Connect, idempotency key from the ledger row), then
   marked paid. A transfer Stripe refuses (the account was closed) releases the payout's
   invoices for a later review; the others are paid.
5. A report (``reports``, kind ``affiliate-payout``, tenant ``global``) says what was paid, held
   and refused.

Workflow id ``global:affiliate-payout:{quarter}`` (``2026-q3``); the quarterly schedule's runs
``global:affiliate-payout:quarterly-{scheduled time}``, each reviewing the quarter before it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Annotated, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.affiliates import (
        AffiliateActivities,
        CommissionedRequest,
        CommissionLine,
        MarkPaid,
        Referrals,
        ReferralsRequest,
        RecordPayout,
        ReleasePayout,
    )
    from activities.lago import LagoActivities, PaidInvoice, PaidInvoicesRequest
    from activities.reports import ReportActivities, StoreReport
    from activities.stripe import SendTransfer, StripeActivities
    from core.activity import raise_if_cancelled, run_activity
    from core.names import PLATFORM_TENANT, PROGRESS_QUERY
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.capability import ScheduleDecl, Capability
    from workflows.stages import Stages

NAME = "affiliate-payout"
QUARTER_PATTERN = r"^20[0-9]{2}-q[1-4]$"  # 2000 to 2099: a date the calendar can hold
FINANCE_ROLES = ["finance"]
ESCALATION_ROLES = ["finance", "super_admin"]
REMIND_AFTER = timedelta(days=2)
ESCALATE_AFTER = timedelta(days=7)
# How far before a quarter's end a review looks for paid invoices that earned nothing yet.
LOOKBACK_DAYS = 3 * 366
# Patch: the transfer goes to the affiliate's account as it is when paying.
ACCOUNT_AT_PAY_TIME = "affiliate-payout-account-at-pay-time"

Outcome = Literal["paid", "rejected", "nothing_to_pay"]
Held = Literal["paused", "no_payout_account", "below_minimum", "held_by_finance"]
Stage = Literal["started", "collecting", "awaiting_finance", "paying", "reporting", "completed", "failed"]


class AffiliatePayoutInput(msgspec.Struct, frozen=True, kw_only=True):
    # The quarter reviewed (``2026-q3``); None: the quarter before the run started.
    quarter: Annotated[str, msgspec.Meta(pattern=QUARTER_PATTERN)] | None = None
    # Smallest payout sent, in cents of its currency: less is held for a later review.
    minimum_cents: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 5_000
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class Earning(msgspec.Struct, frozen=True, kw_only=True):
    """What one affiliate earned in one currency, and whether it is paid now."""

    affiliate_id: str
    name: str
    currency: str
    commission_percent: str  # as a decimal string ("12.5")
    amount_cents: int
    lines: list[CommissionLine]
    held: Held | None = None


class PayoutDone(msgspec.Struct, frozen=True, kw_only=True):
    affiliate_id: str
    currency: str
    amount_cents: int
    payout_id: int
    transfer_id: str


class PayoutRefused(msgspec.Struct, frozen=True, kw_only=True):
    affiliate_id: str
    currency: str
    amount_cents: int
    error: str


class AffiliatePayoutResult(msgspec.Struct, frozen=True, kw_only=True):
    quarter: str
    outcome: Outcome
    paid: list[PayoutDone] = []
    held: list[Earning] = []
    refused: list[PayoutRefused] = []
    total_paid_cents: dict[str, int] = {}  # per currency
    report_id: int | None = None
    decisions: list[DecisionRecord] = []


class AffiliatePayoutProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    quarter: str | None = None
    updated_at: datetime | None = None


def quarter_of(day: date) -> str:
    return f"{day.year}-q{(day.month - 1) // 3 + 1}"


def previous_quarter(day: date) -> str:
    first = date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return quarter_of(first - timedelta(days=1))


def quarter_dates(quarter: str) -> tuple[date, date]:
    """The first and last day of ``2026-q3``."""
    year, q = int(quarter[:4]), int(quarter[-1])
    first = date(year, 3 * q - 2, 1)
    after = date(year + 1, 1, 1) if q == 4 else date(year, 3 * q + 1, 1)
    return first, after - timedelta(days=1)


def percent_text(percent: Decimal) -> str:
    """A percent as people write it: ``10``, ``12.5`` (never ``1E+1``)."""
    return format(percent.normalize(), "f")


def commission(amount_cents: int, percent: Decimal) -> int:
    """The affiliate's share of an amount, rounded down to the cent (never more than earned)."""
    return int((Decimal(amount_cents) * percent / 100).to_integral_value(rounding=ROUND_DOWN))


def earnings(referrals: Referrals, invoices: list[PaidInvoice], already_paid: set[str],
             minimum_cents: int) -> list[Earning]:
    """Per affiliate and currency: the commissions of its referred tenants' paid invoices not
    paid before, and whether the payout is held (and why). Sorted by affiliate, then currency."""
    affiliates = {a.id: a for a in referrals.affiliates}
    referred = {r.tenant_id: r for r in referrals.referrals if r.affiliate_id in affiliates}
    lines: dict[tuple[str, str], list[CommissionLine]] = defaultdict(list)
    for inv in invoices:
        ref = referred.get(inv.tenant_id)
        if ref is None or inv.lago_id in already_paid or inv.issuing_date < ref.referred_on or inv.amount_cents <= 0:
            continue
        share = commission(inv.amount_cents, affiliates[ref.affiliate_id].commission_percent)
        lines[(ref.affiliate_id, inv.currency)].append(CommissionLine(
            lago_invoice_id=inv.lago_id, invoice_number=inv.number, tenant_id=inv.tenant_id,
            issuing_date=inv.issuing_date, invoice_cents=inv.amount_cents, commission_cents=share))
    found = []
    for (affiliate_id, currency), its in sorted(lines.items()):
        a = affiliates[affiliate_id]
        amount = sum(x.commission_cents for x in its)
        if amount <= 0:
            continue
        held: Held | None = ("paused" if a.status != "active" else "no_payout_account" if a.payout_account is None
                             else "below_minimum" if amount < minimum_cents else None)
        found.append(Earning(affiliate_id=affiliate_id, name=a.name, currency=currency,
                             commission_percent=percent_text(a.commission_percent), amount_cents=amount,
                             lines=its, held=held))
    return found


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


def _totals(cents: list[tuple[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for currency, amount in cents:
        totals[currency] += amount
    return dict(sorted(totals.items()))


@workflow.defn(name="AffiliatePayoutReview")
class AffiliatePayoutWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._quarter: str | None = None

    @workflow.run
    async def run(self, inp: AffiliatePayoutInput) -> AffiliatePayoutResult:
        started = workflow.info().start_time.astimezone(UTC).date()
        quarter = self._quarter = inp.quarter or previous_quarter(started)
        first, last = quarter_dates(quarter)
        try:
            await self.stage("collecting")
            referrals = await run_activity(AffiliateActivities.referrals, ReferralsRequest())
            invoices = []
            if referrals.referrals:
                since = max(min(r.referred_on for r in referrals.referrals), last - timedelta(days=LOOKBACK_DAYS))
                invoices = (await run_activity(LagoActivities.paid_invoices, PaidInvoicesRequest(
                    tenant_ids=sorted({r.tenant_id for r in referrals.referrals}), issued_from=since,
                    issued_to=last))).invoices
            done = set((await run_activity(AffiliateActivities.commissioned, CommissionedRequest(
                invoice_ids=[i.lago_id for i in invoices]))).invoice_ids) if invoices else set()
            found = earnings(referrals, invoices, done, inp.minimum_cents)
            payable = [e for e in found if e.held is None]
            if not payable:
                return await self._finish(quarter, "nothing_to_pay", found, [], [], [])

            await self.stage("awaiting_finance", "earnings_collected")
            totals = _totals([(e.currency, e.amount_cents) for e in payable])
            outcome = await self.ask(ApprovalRequest(
                request_id=f"payouts-{quarter}", kind="affiliate.payout",
                title=f"Affiliate payouts for {quarter}: {len(payable)} to pay",
                summary=f"{', '.join(_money(c, cur) for cur, c in totals.items())} to {len(payable)} affiliate "
                        f"payout(s) from {sum(len(e.lines) for e in payable)} paid invoice(s) issued up to {last} "
                        f"(quarter from {first}); {len(found) - len(payable)} held. Edit 'hold' to leave affiliates "
                        "out this time.",
                proposal={"quarter": quarter, "hold": [],
                          "payouts": [{"affiliate_id": e.affiliate_id, "name": e.name, "currency": e.currency,
                                       "amount_cents": e.amount_cents, "commission_percent": e.commission_percent,
                                       "invoices": len(e.lines)} for e in payable],
                          "held": [{"affiliate_id": e.affiliate_id, "currency": e.currency,
                                    "amount_cents": e.amount_cents, "reason": e.held} for e in found if e.held]},
                allowed=["approve", "reject", "edit"], audience="admin", roles=FINANCE_ROLES,
                due_in_seconds=int(ESCALATE_AFTER.total_seconds()),
                remind_after_seconds=[int(REMIND_AFTER.total_seconds())], timeout_action="escalate",
                escalate_to_audience="admin", escalate_to_roles=ESCALATION_ROLES,
                edit_schema={"type": "object", "additionalProperties": False, "properties": {"hold": {
                    "type": "array", "uniqueItems": True,
                    "items": {"type": "string", "enum": sorted({e.affiliate_id for e in payable})}}}},
            ))
            if not outcome.approved:
                return await self._finish(quarter, "rejected", found, [], [], outcome.decisions)

            await self.stage("paying", "finance_approved")
            hold = set(outcome.proposal.get("hold") or [])
            approved_by = next((d.decided_by for d in reversed(outcome.decisions)), "finance")
            accounts = {a.id: a.payout_account for a in referrals.affiliates}  # as read when the review began
            paid, refused, kept = [], [], []
            for e in found:
                if e.held is None and e.affiliate_id in hold:
                    e = msgspec.structs.replace(e, held="held_by_finance")
                if e.held is not None:
                    kept.append(e)
                    continue
                done_or_refused = await self._pay(e, quarter, approved_by, accounts.get(e.affiliate_id))
                (paid if isinstance(done_or_refused, PayoutDone) else refused).append(done_or_refused)
            return await self._finish(quarter, "paid", kept, paid, refused, outcome.decisions)
        except Exception:
            self._enter("failed")
            raise

    async def _pay(self, e: Earning, quarter: str, approved_by: str,
                   account_at_start: str | None) -> PayoutDone | PayoutRefused:
        wf_id = workflow.info().workflow_id
        record = await run_activity(AffiliateActivities.record_payout, RecordPayout(
            workflow_id=wf_id, affiliate_id=e.affiliate_id, currency=e.currency, approved_by=approved_by,
            lines=e.lines))
        if record.status == "paid" and record.transfer_id:  # paid before this run was replayed
            return PayoutDone(affiliate_id=e.affiliate_id, currency=e.currency, amount_cents=record.amount_cents,
                              payout_id=record.payout_id, transfer_id=record.transfer_id)
        # Runs begun before the ledger answered the account keep paying the account read at their start.
        account = record.payout_account if workflow.patched(ACCOUNT_AT_PAY_TIME) else account_at_start
        if record.amount_cents <= 0 or not account:
            # Another review took every invoice meanwhile, or the account was removed while finance decided.
            await run_activity(AffiliateActivities.release_payout, ReleasePayout(payout_id=record.payout_id))
            return PayoutRefused(affiliate_id=e.affiliate_id, currency=e.currency, amount_cents=record.amount_cents,
                                 error="its invoices were paid by another review" if record.amount_cents <= 0
                                 else "the affiliate has no payout account any more")
        try:
            sent = await run_activity(StripeActivities.transfer, SendTransfer(
                account=account, amount_cents=record.amount_cents, currency=e.currency,
                transfer_group=f"affiliate-payout-{quarter}",
                description=f"BizOSaaS affiliate commission {quarter} ({record.lines} invoices)",
                metadata={"affiliate_id": e.affiliate_id, "payout_id": str(record.payout_id), "workflow_id": wf_id},
                idempotency_key=f"affiliate-payout-{record.payout_id}"))
        except ActivityError as err:  # refused by Stripe (not an outage: those are retried)
            raise_if_cancelled(err)
            await run_activity(AffiliateActivities.release_payout, ReleasePayout(payout_id=record.payout_id))
            return PayoutRefused(affiliate_id=e.affiliate_id, currency=e.currency, amount_cents=record.amount_cents,
                                 error=str(err.cause or err))
        await run_activity(AffiliateActivities.mark_paid, MarkPaid(payout_id=record.payout_id,
                                                                   transfer_id=sent.transfer_id))
        return PayoutDone(affiliate_id=e.affiliate_id, currency=e.currency, amount_cents=record.amount_cents,
                          payout_id=record.payout_id, transfer_id=sent.transfer_id)

    async def _finish(self, quarter: str, outcome: Outcome, held: list[Earning], paid: list[PayoutDone],
                      refused: list[PayoutRefused], decisions: list[DecisionRecord]) -> AffiliatePayoutResult:
        await self.stage("reporting", outcome)
        result = AffiliatePayoutResult(
            quarter=quarter, outcome=outcome, paid=paid, held=[e for e in held if e.held], refused=refused,
            total_paid_cents=_totals([(p.currency, p.amount_cents) for p in paid]), decisions=decisions)
        body = msgspec.to_builtins(result)
        for key in ("report_id", "decisions"):
            body.pop(key, None)
        stored = await run_activity(ReportActivities.store, StoreReport(
            tenant_id=PLATFORM_TENANT, kind=NAME, workflow_id=workflow.info().workflow_id, subject=quarter,
            offline=False, body=body))
        self._enter("completed", "report_stored")
        return msgspec.structs.replace(result, report_id=stored.report_id)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> AffiliatePayoutProgress:
        return AffiliatePayoutProgress(stage=self._stage, steps_done=list(self._steps), quarter=self._quarter,
                                       updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=AffiliatePayoutWorkflow,
    input_type=AffiliatePayoutInput,
    business_key=lambda inp: inp.quarter or previous_quarter(datetime.now(UTC).date()),
    tenant_in_input=lambda inp: PLATFORM_TENANT,
    start_roles=frozenset({"super_admin", "admin", "finance"}),
    cancel_roles=frozenset({"super_admin", "admin", "finance"}),
    decide_roles=frozenset(ESCALATION_ROLES),
    summary="Affiliate Payout Review: each quarter, the commissions affiliates earned on their referred tenants' "
            "paid Lago invoices (each invoice once), validated by finance (approve, reject, or hold some), then "
            "transferred to their Stripe connected accounts; a report says what was paid and held.",
    schedules=(
        ScheduleDecl(
            name="affiliate-payout-quarterly",
            key="quarterly",
            input=lambda t: AffiliatePayoutInput(requested_by="schedule"),
            cron=("0 6 2 1,4,7,10 *",),  # 06:00 UTC on the 2nd day of each quarter: the quarter before it
            per_tenant=False,
            min_interval=timedelta(days=1),
            summary="Quarterly Affiliate Payout Review of the quarter just ended.",
        ),
    ),
)
