"""Affiliate Payout Review: admins keep affiliates and referrals over HTTP, finance validates a
quarter's payouts in the approval hub, and the money reaches the affiliates' Stripe connected
accounts (localstripe), each paid invoice earning its commission once.

The referred tenants' paid invoices are in the Lago sandbox, placed on the days they were issued.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
import stripe
from temporalio.client import Client

from activities.affiliates import Affiliate, Referral, Referrals
from activities.lago import PaidInvoice
from tests.conftest import Tokens, assert_eventually
from tests.support import LAGO_TEST_KEY, STRIPE_TEST_KEY, add_tenant, record_history
from workflows.affiliate_payout import (
    AffiliatePayoutResult,
    commission,
    earnings,
    percent_text,
    previous_quarter,
    quarter_dates,
)


# --- the arithmetic, alone -------------------------------------------------------------------

def test_quarters() -> None:
    assert previous_quarter(date(2026, 1, 2)) == "2025-q4"
    assert previous_quarter(date(2026, 11, 27)) == "2026-q3"
    assert quarter_dates("2026-q1") == (date(2026, 1, 1), date(2026, 3, 31))
    assert quarter_dates("2024-q4") == (date(2024, 10, 1), date(2024, 12, 31))


def test_earnings_per_affiliate_and_currency_each_invoice_once_and_why_held() -> None:
    refs = Referrals(
        affiliates=[Affiliate(id="a", name="A", payout_account="acct_1", commission_percent=Decimal("12.5"),
                              status="active"),
                    Affiliate(id="b", name="B", payout_account=None, commission_percent=Decimal("10"),
                              status="active"),
                    Affiliate(id="p", name="P", payout_account="acct_2", commission_percent=Decimal("10"),
                              status="paused")],
        referrals=[Referral(tenant_id="t1", affiliate_id="a", referred_on=date(2026, 2, 1)),
                   Referral(tenant_id="t2", affiliate_id="b", referred_on=date(2026, 1, 1)),
                   Referral(tenant_id="t3", affiliate_id="p", referred_on=date(2026, 1, 1))])

    def inv(lago_id: str, tenant: str, cents: int, day: date, currency: str = "USD") -> PaidInvoice:
        return PaidInvoice(lago_id=lago_id, number=lago_id.upper(), tenant_id=tenant, currency=currency,
                           amount_cents=cents, issuing_date=day)

    found = earnings(refs, [
        inv("i1", "t1", 10_001, date(2026, 2, 10)),  # 1250.125 -> 1250 (rounded down)
        inv("i2", "t1", 99_999, date(2026, 1, 31)),  # before the referral: nothing
        inv("i3", "t1", 40_000, date(2026, 3, 1)),  # paid by an earlier review
        inv("i4", "t1", 20_000, date(2026, 3, 2), "EUR"),
        inv("i5", "t2", 90_000, date(2026, 3, 3)),
        inv("i6", "t3", 90_000, date(2026, 3, 3)),
        inv("i7", "nobody", 90_000, date(2026, 3, 3)),  # no referral
    ], already_paid={"i3"}, minimum_cents=2_000)
    got = {(e.affiliate_id, e.currency): (e.amount_cents, [x.lago_invoice_id for x in e.lines], e.held) for e in found}
    assert got == {
        ("a", "EUR"): (2_500, ["i4"], None),
        ("a", "USD"): (1_250, ["i1"], "below_minimum"),
        ("b", "USD"): (9_000, ["i5"], "no_payout_account"),
        ("p", "USD"): (9_000, ["i6"], "paused"),
    }
    assert commission(3, Decimal("50")) == 1 and commission(199, Decimal("0.5")) == 0
    assert [percent_text(Decimal(p)) for p in ("10.00", "12.50", "0.05", "100")] == ["10", "12.5", "0.05", "100"]


# --- over HTTP, with the real workers -------------------------------------------------------

@pytest.fixture
async def sc(localstripe_url: str) -> Any:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": localstripe_url},
                                 http_client=stripe.HTTPXClient())
    yield client


async def _lago(lago_url: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"{lago_url}/api/v1", timeout=10,
                                 headers={"authorization": f"Bearer {LAGO_TEST_KEY}"}) as lago:
        r = await lago.request(method, path, json=body)
        assert r.status_code == 200, r.text
        return r.json()


async def paid_invoice(lago_url: str, tenant: str, cents: int, issued: str, paid: bool = True) -> str:
    """A one-off invoice of the tenant's Lago customer issued on that day, paid or not."""
    await _lago(lago_url, "POST", "/customers", {"customer": {"external_id": tenant, "name": tenant,
                                                              "currency": "USD"}})
    inv = (await _lago(lago_url, "POST", "/invoices", {"invoice": {
        "external_customer_id": tenant, "currency": "USD", "issuing_date": issued,
        "fees": [{"add_on_code": "setup", "units": 1, "unit_amount_cents": cents}]}}))["invoice"]
    if paid:
        await _lago(lago_url, "PUT", f"/invoices/{inv['lago_id']}", {"invoice": {"payment_status": "succeeded"}})
    return inv["lago_id"]


async def _affiliate(http: httpx.AsyncClient, tokens: Tokens, affiliate_id: str, percent: str,
                     account: str | None, tenants: list[str], referred_at: str = "2026-01-01T00:00:00Z") -> None:
    r = await http.put(f"/v1/admin/affiliates/{affiliate_id}", headers=tokens.admin(), json={
        "name": affiliate_id.title(), "email": f"pay@{affiliate_id}.example", "commission_percent": percent,
        "payout_account": account})
    assert r.status_code == 200, r.text
    assert r.json()["commission_percent"] == percent
    for t in tenants:
        r = await http.put(f"/v1/admin/affiliates/{affiliate_id}/referrals/{t}", headers=tokens.admin(),
                           json={"referred_at": referred_at})
        assert r.status_code == 200, r.text


async def _review(http: httpx.AsyncClient, tokens: Tokens, quarter: str) -> tuple[str, dict[str, Any]]:
    """Finance starts the quarter's review; the request it is asked, from the admin approval hub."""
    r = await http.post("/v1/workflows/affiliate-payout", headers=tokens.finance(), json={"quarter": quarter})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"global:affiliate-payout:{quarter}"

    async def asked() -> dict[str, Any]:
        page = (await http.get("/v1/admin/approvals", params={"tenant_id": "global"}, headers=tokens.finance())).json()
        mine = [a for a in page["items"] if a["workflow_id"] == wf_id]
        assert mine, page
        return mine[0]

    return wf_id, await assert_eventually(asked, timeout=60, interval=0.2)


async def _transfers(sc: Any, account: str) -> list[tuple[int, str]]:
    listing = await sc.v1.transfers.list_async({"destination": account, "limit": 100})
    return sorted((t.amount, t.transfer_group) for t in listing.data)


async def test_finance_validates_a_quarter_and_each_invoice_earns_once(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, lago_url: str, sc: Any
) -> None:
    t1, t2, t3, t4 = [await add_tenant(db, p) for p in ("ref-a1", "ref-a2", "ref-b", "ref-d")]
    acct_a = (await sc.v1.accounts.create_async({"type": "express", "email": "pay@agency-a.example"})).id
    acct_d = (await sc.v1.accounts.create_async({"type": "express", "email": "pay@agency-d.example"})).id
    acct_b = (await sc.v1.accounts.create_async({"type": "express", "email": "pay@agency-b.example"})).id
    await _affiliate(http, tokens, "agency-a", "10", acct_a, [t1, t2])
    await _affiliate(http, tokens, "agency-b", "12.5", None, [t3])  # no account yet: held
    await _affiliate(http, tokens, "agency-d", "20", acct_d, [t4])
    q2 = [await paid_invoice(lago_url, t1, 100_000, "2026-04-15"),  # 10 % -> 10,000
          await paid_invoice(lago_url, t2, 55_555, "2026-06-30"),  # -> 5,555
          await paid_invoice(lago_url, t3, 80_000, "2026-05-01"),  # 12.5 % -> 10,000, held: no account
          await paid_invoice(lago_url, t4, 50_000, "2026-05-02")]  # 20 % -> 10,000, finance holds it
    await paid_invoice(lago_url, t1, 70_000, "2026-05-03", paid=False)  # not paid: earns nothing
    await paid_invoice(lago_url, t1, 60_000, "2026-07-01")  # the next quarter's: 6,000

    # Staff only: a client of a referred tenant sees neither the affiliates nor the review.
    assert (await http.get("/v1/admin/affiliates", headers=tokens.client(t1))).status_code == 403

    wf_id, action = await _review(http, tokens, "2026-q2")
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(t1))).status_code == 404
    detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.finance())).json()
    proposal = detail["request"]["proposal"]
    payouts = {p["affiliate_id"]: p["amount_cents"] for p in proposal["payouts"] if p["affiliate_id"] in ("agency-a", "agency-d")}
    assert payouts == {"agency-a": 15_555, "agency-d": 10_000}, proposal
    assert {(h["affiliate_id"], h["reason"]) for h in proposal["held"]} >= {("agency-b", "no_payout_account")}

    # A client cannot decide it; finance approves, holding agency-d this time.
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.client(t1),
                        json={"decision": "approve"})
    assert r.status_code in (403, 404), r.text
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.finance(),
                        json={"decision": "edit", "edits": {"hold": ["agency-d"]}, "comment": "d under review"})
    assert r.status_code == 200, r.text
    handle = client.get_workflow_handle(wf_id, result_type=AffiliatePayoutResult)
    result = await handle.result()
    assert result.outcome == "paid" and result.quarter == "2026-q2"
    assert [(p.affiliate_id, p.amount_cents) for p in result.paid] == [("agency-a", 15_555)]
    assert {(h.affiliate_id, h.held) for h in result.held} >= {("agency-b", "no_payout_account"),
                                                               ("agency-d", "held_by_finance")}
    assert await _transfers(sc, acct_a) == [(15_555, "affiliate-payout-2026-q2")]
    assert await _transfers(sc, acct_d) == []
    ledger = await db.fetch("SELECT lago_invoice_id, commission_cents FROM affiliate_commissions WHERE "
                            "lago_invoice_id = ANY($1::text[]) ORDER BY commission_cents", q2)
    assert [r["commission_cents"] for r in ledger] == [5_555, 10_000]
    report = await db.fetchrow("SELECT tenant_id, body FROM reports WHERE workflow_id = $1", wf_id)
    assert report["tenant_id"] == "global" and report["body"]["total_paid_cents"] == {"USD": 15_555}
    assert await db.fetchval("SELECT actor FROM audit_log WHERE workflow_id = $1 AND action = 'approval.edit'",
                             wf_id) == "finance@bizosaas"
    await record_history(handle, "affiliate-payout")

    # agency-b connects its account; the next quarter pays what was held, and agency-a only its
    # new invoice: the ledger keeps the quarter before from being paid twice.
    await _affiliate(http, tokens, "agency-b", "12.5", acct_b, [])
    wf_id, action = await _review(http, tokens, "2026-q3")
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.finance(),
                        json={"decision": "approve"})
    assert r.status_code == 200, r.text
    result = await client.get_workflow_handle(wf_id, result_type=AffiliatePayoutResult).result()
    mine = {p.affiliate_id: p.amount_cents for p in result.paid if p.affiliate_id in ("agency-a", "agency-b", "agency-d")}
    assert mine == {"agency-a": 6_000, "agency-b": 10_000, "agency-d": 10_000}
    assert await _transfers(sc, acct_a) == [(6_000, "affiliate-payout-2026-q3"), (15_555, "affiliate-payout-2026-q2")]
    assert await _transfers(sc, acct_b) == [(10_000, "affiliate-payout-2026-q3")]

    view = (await http.get("/v1/admin/affiliates/agency-a", headers=tokens.finance())).json()
    assert [(p["amount_cents"], p["status"], p["invoices"]) for p in view["payouts"]] == [(6_000, "paid", 1),
                                                                                        (15_555, "paid", 2)]
    assert sorted(r["tenant_id"] for r in view["referrals"]) == sorted([t1, t2])


async def test_affiliate_input_is_checked_and_named(http: httpx.AsyncClient, tokens: Tokens) -> None:
    base = {"name": "X", "email": "x@x.example", "commission_percent": "5"}
    for body, field in (({**base, "commission_percent": "101"}, "commission_percent"),
                        ({**base, "commission_percent": "1.005"}, "commission_percent"),
                        ({**base, "commission_percent": 5}, "commission_percent"),
                        ({**base, "payout_account": "ba_123"}, "payout_account"),
                        ({**base, "email": "nope"}, "email"),
                        ({**base, "status": "gone"}, "status"),
                        ({**base, "extra": 1}, "extra")):
        r = await http.put("/v1/admin/affiliates/agency-x", headers=tokens.admin(), json=body)
        assert r.status_code == 400 and field in r.text, (body, r.text)
    assert (await http.get("/v1/admin/affiliates/agency-x", headers=tokens.admin())).status_code == 404
    r = await http.put("/v1/admin/affiliates/agency-x/referrals/no-such-tenant", headers=tokens.admin(), json={})
    assert r.status_code == 404
    for quarter in ("2026-Q5", "2026-q5", "0000-q1"):
        r = await http.post("/v1/workflows/affiliate-payout", headers=tokens.finance(), json={"quarter": quarter})
        assert r.status_code == 400 and "quarter" in r.text, (quarter, r.text)


async def test_a_rejected_review_pays_nothing_and_a_refused_transfer_frees_the_invoices(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, lago_url: str
) -> None:
    tenant = await add_tenant(db, "ref-gone")
    # An account Stripe does not know (closed since): the transfer is refused.
    await _affiliate(http, tokens, "agency-gone", "10", "acct_closedlongago", [tenant], "2025-10-01T00:00:00Z")
    invoice = await paid_invoice(lago_url, tenant, 90_000, "2025-12-10")  # -> 9,000

    wf_id, action = await _review(http, tokens, "2025-q4")
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.finance(),
                        json={"decision": "reject", "comment": "numbers to be checked"})
    assert r.status_code == 200, r.text
    result = await client.get_workflow_handle(wf_id, result_type=AffiliatePayoutResult).result()
    assert result.outcome == "rejected" and result.paid == []
    assert await db.fetchval("SELECT count(*) FROM affiliate_commissions WHERE lago_invoice_id = $1", invoice) == 0

    # The next review proposes the invoice again; finance approves, Stripe refuses the transfer.
    wf_id, action = await _review(http, tokens, "2026-q1")
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=tokens.finance(),
                        json={"decision": "approve"})
    assert r.status_code == 200, r.text
    result = await client.get_workflow_handle(wf_id, result_type=AffiliatePayoutResult).result()
    refused = [p for p in result.refused if p.affiliate_id == "agency-gone"]
    assert [(p.amount_cents, "acct_closedlongago" in p.error) for p in refused] == [(9_000, True)], result.refused
    assert not [p for p in result.paid if p.affiliate_id == "agency-gone"]
    # Nothing kept in the ledger: a later review, once the account is fixed, pays the invoice.
    assert await db.fetchval("SELECT count(*) FROM affiliate_commissions WHERE lago_invoice_id = $1", invoice) == 0
    assert await db.fetchval("SELECT count(*) FROM affiliate_payouts WHERE workflow_id = $1", wf_id) == 0
    report = await db.fetchval("SELECT body FROM reports WHERE workflow_id = $1", wf_id)
    assert [r["affiliate_id"] for r in report["refused"]] == ["agency-gone"]
