"""Order Processing & Fraud started through the API with a Stripe payment (localstripe): stock
through the commerce tool, agent plus rules, the client's review, capture or release of the
payment, the shipping label in the outbox."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import stripe

from tests.conftest import Tokens, assert_eventually, unique
from tests.support import STRIPE_TEST_KEY, add_tenant
from core.settings import Settings


async def authorized_payment(url: str, tenant: str, cents: int) -> str:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, http_client=stripe.HTTPXClient())
    intent = await client.v1.payment_intents.create_async({
        "amount": cents, "currency": "usd", "payment_method": "pm_card_visa", "capture_method": "manual",
        "confirm": True, "metadata": {"tenant_id": tenant}})
    assert intent.status == "requires_capture"
    return intent.id


async def payment_status(url: str, intent_id: str) -> str:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, http_client=stripe.HTTPXClient())
    return (await client.v1.payment_intents.retrieve_async(intent_id)).status


def order(tenant: str, total: float, qty: int = 2, **kw: Any) -> dict[str, Any]:
    body = {"tenant_id": tenant, "order_key": unique("web"), "lines": [
        {"sku": "SOUR-1", "quantity": qty, "unit_price": total / qty, "title": "Sourdough"}],
        "total": total, "customer_email": "ann@example.com", "billing_country": "US", "shipping_country": "US"}
    body.update(kw)
    return body


async def completed(http: httpx.AsyncClient, tokens: Tokens, tenant: str, wf_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "COMPLETED", view
        return view["result"]

    return await assert_eventually(done, timeout=60)


async def test_a_small_order_is_captured_and_shipped_without_review(
    http: httpx.AsyncClient, tokens: Tokens, settings: Settings, db: asyncpg.Pool, localstripe_url: str
) -> None:
    tenant = await add_tenant(db, "bakery")
    intent = await authorized_payment(localstripe_url, tenant, 4000)
    r = await http.post("/v1/workflows/order", json=order(tenant, 40.0, payment_intent_id=intent),
                        headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    result = await completed(http, tokens, tenant, wf_id)
    assert result["status"] == "accepted" and not result["reviewed"]
    assert result["agent_offline"] is True and 0 <= result["agent_score"] <= 100
    assert result["payment"]["action"] == "captured" and await payment_status(localstripe_url, intent) == "succeeded"
    assert result["shipping_label"]["tracking_number"].startswith("1Z")
    labels = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'create_shipping_label'",
                            wf_id)
    assert [row["arguments"]["ship_to_country"] for row in labels] == ["US"]
    # The fraud analyst's calls are billed like every LLM call.
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE starts_with(workflow_id, $1 || ':agent:') "
                             "AND agent = 'fraud-analyst'", wf_id) >= 1


async def test_a_rejected_order_releases_its_payment_and_ships_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, localstripe_url: str
) -> None:
    tenant = await add_tenant(db, "deli")
    intent = await authorized_payment(localstripe_url, tenant, 90000)
    r = await http.post("/v1/workflows/order", json=order(tenant, 900.0, payment_intent_id=intent,
                                                          shipping_country="FR"), headers=tokens.admin())
    wf_id = r.json()["workflow_id"]

    async def in_inbox() -> dict[str, Any]:
        items = (await http.get("/v1/pending-actions", headers=tokens.client(tenant))).json()["items"]
        assert [a for a in items if a["workflow_id"] == wf_id], items
        return items[0]

    action = await assert_eventually(in_inbox, timeout=60)
    assert "billing and shipping countries differ" in action["summary"]
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision",
                        json={"decision": "reject", "comment": "looks like fraud"}, headers=tokens.client(tenant))
    assert r.status_code == 200, r.text
    result = await completed(http, tokens, tenant, wf_id)
    assert result["status"] == "rejected" and result["reviewed"]
    assert result["payment"]["action"] == "canceled" and await payment_status(localstripe_url, intent) == "canceled"
    assert result["shipping_label"] is None
    # No label bought (the approval notice mailed to the owner is in the outbox too).
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool = 'create_shipping_label'",
                             wf_id) == 0
    assert await db.fetchval("SELECT status FROM orders WHERE workflow_id = $1", wf_id) == "rejected"


async def test_stock_comes_from_the_commerce_tool(http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool) -> None:
    tenant = unique("cheese")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email) VALUES ($1, 'C', 'starter', 'o@c.io')", tenant)
    await db.execute("INSERT INTO tenant_settings (tenant_id, capability, settings) VALUES ($1, 'order', $2)",
                     tenant, {"inventory": {"SOUR-1": 3}})
    r = await http.post("/v1/workflows/order", json=order(tenant, 50.0, qty=5), headers=tokens.admin())
    result = await completed(http, tokens, tenant, r.json()["workflow_id"])
    assert result["status"] == "out_of_stock" and result["reasons"] == ["out of stock: SOUR-1"]
    assert result["payment"] is None


async def test_the_merchant_cancels_an_order_in_review_and_the_payment_is_released(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, localstripe_url: str
) -> None:
    tenant = await add_tenant(db, "bistro")
    intent = await authorized_payment(localstripe_url, tenant, 90000)
    r = await http.post("/v1/workflows/order", json=order(tenant, 900.0, payment_intent_id=intent),
                        headers=tokens.admin())
    wf_id = r.json()["workflow_id"]

    async def in_inbox() -> None:
        items = (await http.get("/v1/pending-actions", headers=tokens.client(tenant))).json()["items"]
        assert [a for a in items if a["workflow_id"] == wf_id], items

    await assert_eventually(in_inbox, timeout=60)
    # Another tenant's client cannot even see it; the merchant may cancel it.
    assert (await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.client(unique("other")))).status_code == 404
    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.client(tenant))
    assert r.status_code == 202, r.text

    async def canceled() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "CANCELED", view
        return view

    await assert_eventually(canceled, timeout=60)
    # The money held for it went back, the outcome is recorded, and nothing shipped.
    assert await payment_status(localstripe_url, intent) == "canceled"
    row = await db.fetchrow("SELECT status, details FROM orders WHERE workflow_id = $1", wf_id)
    assert row["status"] == "canceled" and row["details"]["payment"]["action"] == "canceled"
    # No label bought (the approval notice mailed to the owner is in the outbox too).
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool = 'create_shipping_label'",
                             wf_id) == 0
    items = (await http.get("/v1/pending-actions", headers=tokens.client(tenant))).json()["items"]
    assert not [a for a in items if a["workflow_id"] == wf_id]
    # Canceled once: a second cancel is a conflict.
    assert (await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.admin())).status_code == 409


async def test_an_order_whose_label_cannot_be_bought_refunds_the_captured_payment(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, localstripe_url: str
) -> None:
    """A step that fails for good after the money was taken (the carrier refuses the address):
    the payment is refunded, the order recorded as failed, and the workflow fails visibly."""
    tenant = await add_tenant(db, "pantry")
    intent = await authorized_payment(localstripe_url, tenant, 4000)
    r = await http.post("/v1/workflows/order", json=order(tenant, 40.0, payment_intent_id=intent,
                                                          billing_country="U1", shipping_country="U1"),
                        headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]

    async def failed() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "FAILED", view
        return view

    await assert_eventually(failed, timeout=60)
    row = await db.fetchrow("SELECT status, details FROM orders WHERE workflow_id = $1", wf_id)
    assert row["status"] == "failed" and row["details"]["payment"]["action"] == "refunded"
    assert row["details"]["reasons"][0].startswith("failed: ")
    # No label bought (the approval notice mailed to the owner is in the outbox too).
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool = 'create_shipping_label'",
                             wf_id) == 0


async def test_an_order_naming_a_payment_stripe_does_not_know_is_still_recorded(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    """A wrong payment id: nothing is held, so nothing is given back, and the order's outcome is
    a row all the same: invalid (its lines do not add up), or failed (the capture is refused)."""

    tenant = await add_tenant(db, "corner")
    unknown = "pi_" + unique("missing").replace("-", "")
    invalid = order(tenant, 40.0, payment_intent_id=unknown)
    invalid["total"] = 55.0
    r = await http.post("/v1/workflows/order", json=invalid, headers=tokens.admin())
    assert r.status_code == 202, r.text
    result = await completed(http, tokens, tenant, r.json()["workflow_id"])
    assert result["status"] == "invalid" and result["payment"]["action"] == "not_found", result
    row = await db.fetchrow("SELECT status, details FROM orders WHERE workflow_id = $1", r.json()["workflow_id"])
    assert row["status"] == "invalid" and row["details"]["payment"]["action"] == "not_found"

    r = await http.post("/v1/workflows/order", json=order(tenant, 40.0, payment_intent_id=unknown),
                        headers=tokens.admin())
    wf_id = r.json()["workflow_id"]

    async def failed() -> None:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "FAILED", view

    await assert_eventually(failed, timeout=60)
    row = await db.fetchrow("SELECT status, details FROM orders WHERE workflow_id = $1", wf_id)
    assert row is not None and row["status"] == "failed" and row["details"]["payment"]["action"] == "not_found"
