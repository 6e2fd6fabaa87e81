"""The sandboxes' side of affiliate payouts, through the clients the platform uses: Stripe Connect
accounts and transfers on localstripe (stripe-python), and Lago's one-off invoices (the
lago-python-client), placed on past issuing dates, paid, and listed by period.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer
from lago_python_client.client import Client as LagoClient
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models.customer import Customer
from lago_python_client.models.invoice import (
    Invoice,
    InvoiceFee,
    InvoiceFeesList,
    InvoiceMetadata,
    InvoiceMetadataList,
    InvoiceResponse,
    OneOffInvoice,
)

from activities.lago import lago_api_url
from sandboxes.stripe import add_connect
from tests.support import LAGO_TEST_KEY, STRIPE_TEST_KEY, unique

T = TypeVar("T")


# --- Stripe Connect on localstripe -------------------------------------------------------------

def stripe_client(url: str, key: str = STRIPE_TEST_KEY) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
    """As ``StripeActivities`` builds it."""
    transport = stripe.HTTPXClient()
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0,
                               http_client=transport), transport


@pytest.fixture
async def sc(localstripe_url: str) -> AsyncIterator[stripe.StripeClient]:
    client, transport = stripe_client(localstripe_url)
    yield client
    await transport.close_async()


async def _account(sc: stripe.StripeClient, **extra: Any) -> stripe.Account:
    return await sc.v1.accounts.create_async({"type": "express", "email": "payouts@affiliate.example",
                                              "country": "FR", **extra})


async def test_connected_accounts_are_created_and_found(sc: stripe.StripeClient) -> None:
    acct = await _account(sc, metadata={"affiliate_id": "aff-1"})
    assert acct.id.startswith("acct_") and acct.object == "account"
    assert (acct.type, acct.email, acct.country, acct.default_currency) == (
        "express", "payouts@affiliate.example", "FR", "eur")
    assert acct.charges_enabled is True and acct.payouts_enabled is True
    assert acct.metadata.to_dict() == {"affiliate_id": "aff-1"}
    assert isinstance(acct.created, int)

    found = await sc.v1.accounts.retrieve_async(acct.id)
    assert found.to_dict() == acct.to_dict()

    with pytest.raises(stripe.InvalidRequestError) as missing:
        await sc.v1.accounts.retrieve_async("acct_nobody")
    assert (missing.value.http_status, missing.value.code, missing.value.param) == (404, "resource_missing", "id")
    assert missing.value.user_message == "No such account: 'acct_nobody'"

    with pytest.raises(stripe.InvalidRequestError) as bad_type:
        await sc.v1.accounts.create_async({"type": "premium"})
    assert (bad_type.value.http_status, bad_type.value.param) == (400, "type")


async def test_transfers_are_listed_by_destination_and_transfer_group(sc: stripe.StripeClient) -> None:
    a, b = await _account(sc), await _account(sc, country="US")
    q1, q2 = unique("2026-q1"), unique("2026-q2")
    first = await sc.v1.transfers.create_async({
        "amount": 500, "currency": "EUR", "destination": a.id, "transfer_group": q1,
        "description": "Affiliate commission", "metadata": {"payout_id": "p1"}})
    assert (first.object, first.amount, first.amount_reversed, first.currency, first.destination) == (
        "transfer", 500, 0, "eur", a.id)
    assert (first.transfer_group, first.description, first.reversed, first.livemode) == (
        q1, "Affiliate commission", False, False)
    assert first.id.startswith("tr_") and first.metadata.to_dict() == {"payout_id": "p1"}
    second = await sc.v1.transfers.create_async({"amount": 700, "currency": "eur", "destination": a.id,
                                                 "transfer_group": q2})
    third = await sc.v1.transfers.create_async({"amount": 300, "currency": "usd", "destination": b.id,
                                                "transfer_group": q1})

    to_a = await sc.v1.transfers.list_async({"destination": a.id})
    assert (to_a.object, to_a.url, to_a.has_more) == ("list", "/v1/transfers", False)
    assert [t.id for t in to_a.data] == [second.id, first.id]  # newest first
    of_q1 = await sc.v1.transfers.list_async({"transfer_group": q1})
    assert [(t.id, t.amount, t.destination) for t in of_q1.data] == [(third.id, 300, b.id), (first.id, 500, a.id)]
    both = await sc.v1.transfers.list_async({"transfer_group": q1, "destination": a.id})
    assert [t.id for t in both.data] == [first.id]

    page = await sc.v1.transfers.list_async({"destination": a.id, "limit": 1})
    assert [t.id for t in page.data] == [second.id] and page.has_more is True
    assert [t.id async for t in page.auto_paging_iter()] == [second.id, first.id]

    found = await sc.v1.transfers.retrieve_async(first.id)
    assert found.to_dict() == first.to_dict()
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await sc.v1.transfers.retrieve_async("tr_nothing")
    assert (missing.value.http_status, missing.value.code, missing.value.param) == (404, "resource_missing", "id")


async def test_the_same_idempotency_key_makes_one_transfer(sc: stripe.StripeClient) -> None:
    acct = await _account(sc)
    group, key = unique("payout"), unique("ledger-row")
    params = {"amount": 1250, "currency": "eur", "destination": acct.id, "transfer_group": group,
              "metadata": {"payout_id": key}}
    first = await sc.v1.transfers.create_async(params, {"idempotency_key": key})
    again = await sc.v1.transfers.create_async(dict(params), {"idempotency_key": key})
    assert again.id == first.id and again.to_dict() == first.to_dict()
    assert [t.id for t in (await sc.v1.transfers.list_async({"transfer_group": group})).data] == [first.id]

    with pytest.raises(stripe.IdempotencyError) as reused:
        await sc.v1.transfers.create_async({**params, "amount": 1251}, {"idempotency_key": key})
    assert reused.value.http_status == 400 and key in (reused.value.user_message or "")
    with pytest.raises(stripe.IdempotencyError):  # a key is for one endpoint
        await sc.v1.accounts.create_async({"type": "express"}, {"idempotency_key": key})

    other = await sc.v1.transfers.create_async(params, {"idempotency_key": unique("ledger-row")})
    assert other.id != first.id
    assert len((await sc.v1.transfers.list_async({"transfer_group": group})).data) == 2


async def test_refused_transfers_name_the_parameter(sc: stripe.StripeClient) -> None:
    acct = await _account(sc)
    group = unique("refused")
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"amount": 100, "currency": "eur", "destination": "acct_unknown1"}, "destination", "resource_missing"),
        ({"currency": "eur", "destination": acct.id}, "amount", "parameter_missing"),
        ({"amount": 0, "currency": "eur", "destination": acct.id}, "amount", "parameter_invalid_integer"),
        ({"amount": "ten", "currency": "eur", "destination": acct.id}, "amount", "parameter_invalid_integer"),
        ({"amount": 100, "destination": acct.id}, "currency", "parameter_missing"),
        ({"amount": 100, "currency": "euro", "destination": acct.id}, "currency", None),
        ({"amount": 100, "currency": "eur"}, "destination", "parameter_missing"),
        ({"amount": 100, "currency": "eur", "destination": acct.id, "payee": "x"}, "payee", "parameter_unknown"),
    ]
    for params, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            await sc.v1.transfers.create_async({**params, "transfer_group": group})
        assert (refused.value.http_status, refused.value.param, refused.value.code) == (400, param, code), params
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        await sc.v1.transfers.create_async({"amount": 100, "currency": "eur", "destination": "acct_unknown1"})
    assert unknown.value.user_message == "No such destination: 'acct_unknown1'"
    assert (await sc.v1.transfers.list_async({"transfer_group": group})).data == []

    # A refused request keeps no result: its key may be sent again, corrected.
    key = unique("retry")
    with pytest.raises(stripe.InvalidRequestError):
        await sc.v1.transfers.create_async({"amount": 100, "currency": "eur", "destination": "acct_unknown1",
                                            "transfer_group": group}, {"idempotency_key": key})
    sent = await sc.v1.transfers.create_async({"amount": 100, "currency": "eur", "destination": acct.id,
                                               "transfer_group": group}, {"idempotency_key": key})
    assert sent.destination == acct.id


async def test_connect_needs_a_secret_key(localstripe_url: str) -> None:
    client, transport = stripe_client(localstripe_url, key="pk_test_public")
    try:
        with pytest.raises(stripe.AuthenticationError):
            await client.v1.transfers.list_async()
    finally:
        await transport.close_async()


async def test_add_connect_on_an_app_and_the_flush_forgets(localstripe_url: str) -> None:
    """On any aiohttp app (localstripe's is one), once; localstripe's flush clears it too."""
    app = web.Application()

    async def flush(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_delete("/_config/data", flush)
    store = add_connect(app)
    assert add_connect(app) is store
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        client, transport = stripe_client(url)
        try:
            acct = await _account(client)
            await client.v1.transfers.create_async({"amount": 1, "currency": "eur", "destination": acct.id},
                                                   {"idempotency_key": "k"})
            assert list(store.accounts) == [acct.id] and len(store.transfers) == 1 and "k" in store.idempotency
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{url}/v1/transfers")).status_code == 401
                assert (await http.delete(f"{url}/_config/data")).status_code == 200
            assert not store.accounts and not store.transfers and not store.idempotency
            with pytest.raises(stripe.InvalidRequestError):
                await client.v1.accounts.retrieve_async(acct.id)
        finally:
            await transport.close_async()


# --- Lago one-off invoices ----------------------------------------------------------------------

class SandboxFee(InvoiceFee):
    units: str | None  # Lago takes a decimal string too


class DatedInvoice(OneOffInvoice):
    issuing_date: str | None  # the sandbox's own field


@pytest.fixture
def lago(lago_url: str) -> LagoClient:
    """As ``LagoActivities`` builds it."""
    return LagoClient(api_key=LAGO_TEST_KEY, api_url=lago_api_url(lago_url))


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The Lago client is synchronous: off the event loop, which serves the sandbox."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _customer(lago: LagoClient, prefix: str) -> str:
    external_id = unique(prefix)
    await call(lago.customers.create, Customer(external_id=external_id, name=external_id, currency="USD"))
    return external_id


async def _invoice(lago: LagoClient, customer: str, issued: str | None, *fees: tuple[Any, int]) -> InvoiceResponse:
    invoice = await call(lago.invoices.create, DatedInvoice(
        external_customer_id=customer, currency="USD", issuing_date=issued,
        fees=InvoiceFeesList(__root__=[SandboxFee(add_on_code="commissionable", units=str(units),
                                                  unit_amount_cents=cents) for units, cents in fees])))
    assert invoice is not None
    return invoice


async def _paid(lago: LagoClient, invoice: InvoiceResponse) -> InvoiceResponse:
    paid = await call(lago.invoices.update, Invoice(payment_status="succeeded"), invoice.lago_id)
    assert paid is not None
    return paid


async def test_paid_invoices_of_a_period_for_two_customers(lago: LagoClient) -> None:
    a, b = await _customer(lago, "ref-a"), await _customer(lago, "ref-b")
    a_jan = await _paid(lago, await _invoice(lago, a, "2001-01-10", (2, 1250)))
    a_feb = await _paid(lago, await _invoice(lago, a, "2001-02-20", ("1.5", 1001), (1, 98)))
    await _paid(lago, await _invoice(lago, a, "2001-04-01", (1, 9999)))  # after the period
    b_mar = await _paid(lago, await _invoice(lago, b, "2001-03-31", (4, 1000)))  # its last day
    b_pending = await _invoice(lago, b, "2001-01-01", (1, 3000))  # not paid
    await _paid(lago, await _invoice(lago, b, "2000-12-31", (1, 500)))  # before the period

    created = await call(lago.invoices.find, a_feb.lago_id)
    assert (created.invoice_type, created.status, created.currency, created.issuing_date) == (
        "one_off", "finalized", "USD", "2001-02-20")
    assert created.fees_amount_cents == 1502 + 98  # 1.5 x 1001 = 1501.5, rounded half up
    assert (created.taxes_amount_cents, created.sub_total_excluding_taxes_amount_cents,
            created.total_amount_cents, created.total_paid_amount_cents, created.total_due_amount_cents) == (
        0, 1600, 1600, 1600, 0)
    assert created.customer is not None and created.customer.external_id == a
    assert created.fees is not None
    assert [(f.units, f.amount_cents, f.item.code if f.item else None, f.payment_status)
            for f in created.fees.__root__] == [("1.5", 1502, "commissionable", "succeeded"),
                                                ("1.0", 98, "commissionable", "succeeded")]
    assert (b_pending.payment_status, b_pending.total_due_amount_cents, b_pending.payment_due_date) == (
        "pending", 3000, "2001-01-01")
    assert (a_jan.sequential_id, a_feb.sequential_id) == (1, 2) and a_jan.number != a_feb.number

    period = {"status": "finalized", "payment_status": "succeeded",
              "issuing_date_from": "2001-01-01", "issuing_date_to": "2001-03-31"}
    listing = await call(lago.invoices.find_all, options=period)
    mine = [(i.lago_id, i.customer.external_id if i.customer else None, i.issuing_date,
             i.sub_total_excluding_taxes_amount_cents) for i in listing["invoices"]
            if i.customer and i.customer.external_id in (a, b)]
    assert mine == [(b_mar.lago_id, b, "2001-03-31", 4000), (a_feb.lago_id, a, "2001-02-20", 1600),
                    (a_jan.lago_id, a, "2001-01-10", 2500)]  # newest issuing date first
    assert all(i.payment_status == "succeeded" for i in listing["invoices"])

    of_a = await call(lago.invoices.find_all, options={**period, "external_customer_id": a})
    assert [(i.lago_id, i.total_amount_cents) for i in of_a["invoices"]] == [(a_feb.lago_id, 1600),
                                                                             (a_jan.lago_id, 2500)]
    assert of_a["meta"] == {"current_page": 1, "next_page": None, "prev_page": None, "total_pages": 1,
                            "total_count": 2}
    unpaid = await call(lago.invoices.find_all, options={"external_customer_id": b, "payment_status": "pending"})
    assert [i.lago_id for i in unpaid["invoices"]] == [b_pending.lago_id]


async def test_invoice_listing_pages(lago: LagoClient) -> None:
    customer = await _customer(lago, "paged")
    ids = [(await _invoice(lago, customer, f"2002-0{month}-15", (1, 100 * month))).lago_id for month in range(1, 6)]
    newest_first = ids[::-1]

    async def page(**options: Any) -> tuple[list[str], dict[str, Any]]:
        found = await call(lago.invoices.find_all, options={"external_customer_id": customer, **options})
        return [i.lago_id for i in found["invoices"]], found["meta"]

    assert await page(per_page=2) == (newest_first[:2], {
        "current_page": 1, "next_page": 2, "prev_page": None, "total_pages": 3, "total_count": 5})
    assert await page(per_page=2, page=2) == (newest_first[2:4], {
        "current_page": 2, "next_page": 3, "prev_page": 1, "total_pages": 3, "total_count": 5})
    assert await page(per_page=2, page=3) == (newest_first[4:], {
        "current_page": 3, "next_page": None, "prev_page": 2, "total_pages": 3, "total_count": 5})
    assert await page(per_page=2, page=4) == ([], {
        "current_page": 4, "next_page": None, "prev_page": None, "total_pages": 3, "total_count": 5})
    assert await page() == (newest_first, {  # 20 a page by default
        "current_page": 1, "next_page": None, "prev_page": None, "total_pages": 1, "total_count": 5})
    assert await page(issuing_date_from="2003-01-01") == ([], {
        "current_page": 1, "next_page": None, "prev_page": None, "total_pages": 0, "total_count": 0})


async def test_invoice_defaults_metadata_and_refusals(lago: LagoClient) -> None:
    customer = await _customer(lago, "inv")
    today = await _invoice(lago, customer, None, (3, 700))
    assert today.issuing_date == datetime.now(UTC).date().isoformat()
    assert (today.payment_status, today.total_amount_cents, today.payment_overdue, today.net_payment_term) == (
        "pending", 2100, False, 0)
    free = await _invoice(lago, customer, "2001-05-05", (1, 0))
    assert free.payment_status == "succeeded"  # nothing to pay

    tagged = await call(lago.invoices.update, Invoice(metadata=InvoiceMetadataList(__root__=[
        InvoiceMetadata(key="payout", value="p-1"), InvoiceMetadata(key="quarter", value="2001-q1")])), today.lago_id)
    assert tagged is not None and tagged.payment_status == "pending"
    assert [(m.key, m.value) for m in tagged.metadata.__root__] == [("payout", "p-1"), ("quarter", "2001-q1")]
    retagged = await call(lago.invoices.update, Invoice(metadata=InvoiceMetadataList(__root__=[
        InvoiceMetadata(key="quarter", value="2001-q2")])), today.lago_id)
    assert retagged is not None and [(m.key, m.value) for m in retagged.metadata.__root__] == [("quarter", "2001-q2")]

    async def refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        with pytest.raises(LagoApiError) as err:
            await call(fn, *args, **kwargs)
        return err.value.status_code, err.value.response

    status, body = await refused(lago.invoices.create, OneOffInvoice(
        external_customer_id=unique("nobody"), currency="USD",
        fees=InvoiceFeesList(__root__=[InvoiceFee(add_on_code="commissionable", unit_amount_cents=100)])))
    assert (status, body["code"]) == (404, "customer_not_found")
    status, body = await refused(lago.invoices.create, DatedInvoice(
        external_customer_id=customer, currency="usd", issuing_date="2001-02-30",
        fees=InvoiceFeesList(__root__=[SandboxFee(add_on_code="commissionable", units="many",
                                                  unit_amount_cents=100)])))
    assert (status, body["code"]) == (422, "validation_errors")
    assert body["error_details"] == {"units": ["value_is_invalid"], "currency": ["value_is_invalid"],
                                     "issuing_date": ["invalid_date"]}
    status, body = await refused(lago.invoices.create, OneOffInvoice(
        external_customer_id=customer, currency="EUR",
        fees=InvoiceFeesList(__root__=[InvoiceFee(add_on_code="commissionable", unit_amount_cents=100)])))
    assert (status, body["error_details"]) == (422, {"currency": ["currencies_does_not_match"]})

    status, body = await refused(lago.invoices.update, Invoice(payment_status="paid"), today.lago_id)
    assert (status, body["error_details"]) == (422, {"payment_status": ["value_is_invalid"]})
    status, body = await refused(lago.invoices.update, Invoice(payment_status="succeeded"),
                                 "00000000-0000-0000-0000-000000000000")
    assert (status, body["code"]) == (404, "invoice_not_found")
    status, body = await refused(lago.invoices.find_all, options={"payment_status": "paid"})
    assert status == 422 and "payment_status" in body["error_details"]
    status, body = await refused(lago.invoices.find_all, options={"issuing_date_to": "31/03/2001"})
    assert (status, body["error_details"]) == (422, {"issuing_date_to": ["invalid_date"]})
    assert (await call(lago.invoices.find, today.lago_id)).payment_status == "pending"  # unchanged
