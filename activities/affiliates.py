"""Affiliates' rows for the Affiliate Payout Review (workflows queue, Postgres).

- ``affiliates.referrals``: every affiliate with referred tenants, and the referrals.
- ``affiliates.commissioned``: which of some Lago invoices already earned a commission (a
  review of the same or an overlapping period paid it): they earn nothing again.
- ``affiliates.record_payout``: the approved payout of one affiliate in one currency, and its
  commission lines, in one transaction. Idempotent: a retry finds the payout of the review
  (unique by workflow, affiliate and currency) and answers it as recorded. An invoice another
  payout took meanwhile is left out, and the amount is what this payout's own lines add up to.
- ``affiliates.mark_paid``: the payout's Stripe transfer, once sent.
- ``affiliates.release_payout``: a payout that was not sent (Stripe refused the transfer, or
  another review took its invoices): deleted with its lines, so a later review pays them.

The tables are migration 0100; the admin API writes the affiliates and referrals.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

import asyncpg
import msgspec
from temporalio import activity

from core.activity import Activities
from core.names import SLUG_PATTERN, WORKFLOWS_QUEUE
from core.policies import DB

AffiliateId = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]


class Affiliate(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    payout_account: str | None  # Stripe connected account; None: its payouts are held
    commission_percent: Decimal
    status: str  # active | paused (a paused affiliate's payouts are held)


class Referral(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    affiliate_id: str
    referred_on: date  # invoices issued before this day earn nothing


class ReferralsRequest(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Referrals(msgspec.Struct, frozen=True, kw_only=True):
    affiliates: list[Affiliate]
    referrals: list[Referral]


class CommissionedRequest(msgspec.Struct, frozen=True, kw_only=True):
    invoice_ids: list[str]


class Commissioned(msgspec.Struct, frozen=True, kw_only=True):
    invoice_ids: list[str]  # those of the request already in the ledger


class CommissionLine(msgspec.Struct, frozen=True, kw_only=True):
    lago_invoice_id: str
    invoice_number: str = ""
    tenant_id: str
    issuing_date: date
    invoice_cents: int
    commission_cents: int


class RecordPayout(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    affiliate_id: AffiliateId
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
    approved_by: str
    lines: list[CommissionLine]


class PayoutRecord(msgspec.Struct, frozen=True, kw_only=True):
    payout_id: int
    amount_cents: int  # the commissions this payout holds (lines another payout took left out)
    lines: int
    status: str  # approved | paid
    transfer_id: str | None = None
    # The affiliate's connected account as it is now (finance may replace a closed one while the
    # review waits for its decision): where the transfer goes.
    payout_account: str | None = None


class MarkPaid(msgspec.Struct, frozen=True, kw_only=True):
    payout_id: int
    transfer_id: str


class ReleasePayout(msgspec.Struct, frozen=True, kw_only=True):
    payout_id: int


class AffiliateActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="affiliates.referrals")
    async def referrals(self, req: ReferralsRequest) -> Referrals:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            affiliates = await conn.fetch(
                """SELECT id, name, payout_account, commission_percent, status FROM affiliates a
                   WHERE EXISTS (SELECT FROM affiliate_referrals r WHERE r.affiliate_id = a.id) ORDER BY id""")
            referrals = await conn.fetch(
                """SELECT tenant_id, affiliate_id, (referred_at AT TIME ZONE 'UTC')::date AS referred_on
                   FROM affiliate_referrals ORDER BY affiliate_id, tenant_id""")
        return Referrals(
            affiliates=[Affiliate(id=r["id"], name=r["name"], payout_account=r["payout_account"],
                                  commission_percent=r["commission_percent"], status=r["status"]) for r in affiliates],
            referrals=[Referral(tenant_id=r["tenant_id"], affiliate_id=r["affiliate_id"], referred_on=r["referred_on"])
                       for r in referrals])

    @activity.defn(name="affiliates.commissioned")
    async def commissioned(self, req: CommissionedRequest) -> Commissioned:
        rows = await self._pool.fetch(
            "SELECT lago_invoice_id FROM affiliate_commissions WHERE lago_invoice_id = ANY($1::text[]) "
            "ORDER BY lago_invoice_id", req.invoice_ids)
        return Commissioned(invoice_ids=[r["lago_invoice_id"] for r in rows])

    @activity.defn(name="affiliates.record_payout")
    async def record_payout(self, req: RecordPayout) -> PayoutRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            payout_id = await conn.fetchval(
                """INSERT INTO affiliate_payouts (workflow_id, affiliate_id, currency, amount_cents, status, approved_by)
                   VALUES ($1, $2, $3, 0, 'approved', $4)
                   ON CONFLICT (workflow_id, affiliate_id, currency) DO NOTHING RETURNING id""",
                req.workflow_id, req.affiliate_id, req.currency, req.approved_by)
            if payout_id is not None:
                await conn.execute(
                    """INSERT INTO affiliate_commissions (lago_invoice_id, payout_id, affiliate_id, tenant_id, currency,
                                                          invoice_cents, commission_cents, issuing_date)
                       SELECT l.id, $1, $2, l.tenant_id, $3, l.invoice_cents, l.commission_cents, l.issuing_date
                       FROM unnest($4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::date[])
                            AS l(id, tenant_id, invoice_cents, commission_cents, issuing_date)
                       ON CONFLICT (lago_invoice_id) DO NOTHING""",
                    payout_id, req.affiliate_id, req.currency,
                    [x.lago_invoice_id for x in req.lines], [x.tenant_id for x in req.lines],
                    [x.invoice_cents for x in req.lines], [x.commission_cents for x in req.lines],
                    [x.issuing_date for x in req.lines])
                await conn.execute(
                    """UPDATE affiliate_payouts SET amount_cents =
                           (SELECT coalesce(sum(commission_cents), 0) FROM affiliate_commissions WHERE payout_id = $1)
                       WHERE id = $1""", payout_id)
            row = await conn.fetchrow(
                """SELECT p.id, p.amount_cents, p.status, p.transfer_id, a.payout_account,
                          (SELECT count(*) FROM affiliate_commissions c WHERE c.payout_id = p.id) AS lines
                   FROM affiliate_payouts p JOIN affiliates a ON a.id = p.affiliate_id
                   WHERE workflow_id = $1 AND affiliate_id = $2 AND currency = $3""",
                req.workflow_id, req.affiliate_id, req.currency)
        return PayoutRecord(payout_id=row["id"], amount_cents=row["amount_cents"], lines=row["lines"],
                            status=row["status"], transfer_id=row["transfer_id"], payout_account=row["payout_account"])

    @activity.defn(name="affiliates.mark_paid")
    async def mark_paid(self, req: MarkPaid) -> None:
        await self._pool.execute(
            """UPDATE affiliate_payouts SET status = 'paid', transfer_id = $2, paid_at = coalesce(paid_at, now())
               WHERE id = $1""", req.payout_id, req.transfer_id)

    @activity.defn(name="affiliates.release_payout")
    async def release_payout(self, req: ReleasePayout) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT status FROM affiliate_payouts WHERE id = $1 FOR UPDATE",
                                   req.payout_id) != "approved":
                return  # paid (never released), or released before
            await conn.execute("DELETE FROM affiliate_commissions WHERE payout_id = $1", req.payout_id)
            await conn.execute("DELETE FROM affiliate_payouts WHERE id = $1", req.payout_id)
