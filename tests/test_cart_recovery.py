"""Abandoned Cart Recovery: Shopify's signed checkout webhooks start a checkout's reminders and
end them when the checkout is completed; each reminder goes out once, by email or SMS, through
the MCP tools (recorded in the sandbox's outbox).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from core.settings import Settings
from tests.conftest import Tokens, assert_eventually
from tests.support import record_history
from tests.test_webhooks import shop_tenant, shopify_headers
from workflows.capability import Event, InvalidEvent
from workflows.cart_recovery import (
    CartRecoveryResult,
    CartRecoverySettings,
    checkout_key,
    filled,
    shopify_checkout,
)


def checkout(token: str | None, **kw: Any) -> dict[str, Any]:
    """A checkout as Shopify sends it in checkouts/create and checkouts/update."""
    body = {"token": token, "email": "ada@example.com", "phone": "+14155550123", "currency": "usd",
            "total_price": "58.00", "buyer_accepts_marketing": True, "completed_at": None,
            "abandoned_checkout_url": f"https://rose-bakery.example/checkouts/{token}/recover",
            "customer": {"first_name": "Ada", "accepts_marketing": True},
            "line_items": [{"title": "Sourdough loaf", "quantity": 2, "price": "9.00"},
                           {"title": "Wedding cake tasting", "quantity": 1, "price": "40.00"}]}
    body.update(kw)
    return body


def test_a_checkout_event_becomes_the_recovery_input_and_its_text() -> None:
    token = secrets.token_hex(16)
    tenant, key, inp = shopify_checkout(Event(source="shopify", type="checkouts/create", id=None, tenant_id="rose",
                                              payload=checkout(token), sender="webhook:shopify:rose"))
    assert (tenant, key) == ("rose", f"checkout-{token}")
    assert (inp.email, inp.phone, inp.name, inp.currency, inp.total, inp.accepts_marketing) == (
        "ada@example.com", "+14155550123", "Ada", "USD", "58.00", True)
    text = filled("Hi {name}: {items} ({total}). {discount} {link}", inp,
                  CartRecoverySettings(discount_code="BREAD10"))
    assert text == (f"Hi Ada: 2 × Sourdough loaf, 1 × Wedding cake tasting (58.00 USD). Use the code BREAD10 at "
                    f"checkout. https://rose-bakery.example/checkouts/{token}/recover")
    # A token that is no slug still gets a key; a malformed phone is left out, not refused.
    assert checkout_key("AbC_12").startswith("checkout-") and len(checkout_key("AbC_12")) == 41
    _, _, odd = shopify_checkout(Event(source="shopify", type="checkouts/create", id=None, tenant_id="rose",
                                       payload=checkout("t1", phone="555-0123"), sender="s"))
    assert odd.phone is None and odd.email == "ada@example.com"
    for bad in ({"token": None}, {"token": "a b"}, {"total_price": "lots"}, {"email": "not-an-address"}):
        with pytest.raises(InvalidEvent):
            shopify_checkout(Event(source="shopify", type="checkouts/create", id=None, tenant_id="rose",
                                   payload={**checkout("t2"), **bad}, sender="s"))
    with pytest.raises(InvalidEvent, match="not connected"):
        shopify_checkout(Event(source="shopify", type="checkouts/create", id=None, tenant_id=None,
                               payload=checkout("t3"), sender="s"))


async def _deliver(http: httpx.AsyncClient, settings: Settings, domain: str, topic: str,
                   body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    r = await http.post("/v1/webhooks/shopify", content=raw, headers=shopify_headers(settings, domain, raw, topic))
    assert r.status_code == 202, r.text
    return r.json()


async def _reminders(db: asyncpg.Pool, wf_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch("SELECT tool, arguments FROM outbox WHERE workflow_id = $1 ORDER BY id", wf_id)
    return [(r["tool"], r["arguments"]) for r in rows]


async def _settings(http: httpx.AsyncClient, tokens: Tokens, client: Client, tenant: str,
                    body: dict[str, Any]) -> None:
    """The tenant's reminders, set by its own client as the portal would; returns once applied."""
    r = await http.put(f"/v1/tenants/{tenant}/settings/cart-recovery", headers=tokens.client(tenant), json=body)
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()


async def test_a_shopper_gets_a_reminder_and_completing_the_checkout_ends_the_recovery(
    http: httpx.AsyncClient, settings: Settings, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant, domain = await shop_tenant(db)
    await _settings(http, tokens, client, tenant, {"discount_code": "BREAD10", "attribution_hours": 1, "steps": [
        {"after_seconds": 1, "subject": "Your cart, {name}", "text": "{items} for {total}. {discount} {link}"},
        {"after_seconds": 600, "channel": "sms", "text": "Still want it? {link}"}]})
    token = secrets.token_hex(16)
    started = await _deliver(http, settings, domain, "checkouts/create", checkout(token))
    wf_id = f"{tenant}:cart-recovery:checkout-{token}"
    assert (started["outcome"], started["workflow_id"]) == ("started", wf_id)

    async def reminded() -> list[tuple[str, dict[str, Any]]]:
        sent = await _reminders(db, wf_id)
        assert len(sent) == 1, sent
        return sent

    [(tool, email)] = await assert_eventually(reminded, timeout=30, interval=0.2)
    assert tool == "send_email" and email["to"] == ["ada@example.com"] and email["subject"] == "Your cart, Ada"
    assert "BREAD10" in email["text"] and f"/checkouts/{token}/recover" in email["text"]
    # The shopper completes the checkout: Shopify's update ends the wait for the SMS at once.
    done = await _deliver(http, settings, domain, "checkouts/update",
                          checkout(token, completed_at="2026-11-27T10:00:00Z"))
    assert (done["outcome"], done["workflow_id"]) == ("signalled", wf_id)
    handle = client.get_workflow_handle(wf_id, result_type=CartRecoveryResult)
    result = await handle.result()
    assert (result.status, result.recovered_total, result.currency) == ("recovered", "58.00", "USD")
    assert [(s.step, s.channel) for s in result.sent] == [(1, "email")]
    assert [t for t, _ in await _reminders(db, wf_id)] == ["send_email"]  # no SMS
    await record_history(handle, "cart-recovery")
    # Another tenant's people do not see it.
    other, _ = await shop_tenant(db)
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(other))).status_code == 404


async def test_reminders_run_out_by_email_and_sms_and_the_cart_is_not_recovered(
    http: httpx.AsyncClient, settings: Settings, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant, domain = await shop_tenant(db)
    await _settings(http, tokens, client, tenant, {"attribution_hours": 0, "steps": [
        {"after_seconds": 0, "text": "Hi {name}, {items}: {link}"},
        {"after_seconds": 1, "channel": "sms", "text": "Hi {name}, your cart ({total}) waits: {link}"}]})
    token = secrets.token_hex(16)
    await _deliver(http, settings, domain, "checkouts/create", checkout(token))
    wf_id = f"{tenant}:cart-recovery:checkout-{token}"
    result = await client.get_workflow_handle(wf_id, result_type=CartRecoveryResult).result()
    assert result.status == "not_recovered" and result.recovered_total is None
    sent = await _reminders(db, wf_id)
    assert [t for t, _ in sent] == ["send_email", "send_sms"]
    assert sent[1][1]["to"] == "+14155550123" and "58.00 USD" in sent[1][1]["text"]

    # A checkout completed before any reminder: nothing is sent.
    early = secrets.token_hex(16)
    await _settings(http, tokens, client, tenant, {"steps": [{"after_seconds": 30, "text": "{link}"}]})
    await _deliver(http, settings, domain, "checkouts/create", checkout(early))
    await _deliver(http, settings, domain, "checkouts/update", checkout(early, completed_at="2026-11-27T10:00:00Z"))
    result = await client.get_workflow_handle(f"{tenant}:cart-recovery:checkout-{early}",
                                              result_type=CartRecoveryResult).result()
    assert result.status == "completed_before_reminder" and result.sent == []


async def test_no_consent_no_contact_and_bad_settings(
    http: httpx.AsyncClient, settings: Settings, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant, domain = await shop_tenant(db)
    await _settings(http, tokens, client, tenant, {"require_marketing_consent": True})
    token = secrets.token_hex(16)
    await _deliver(http, settings, domain, "checkouts/create",
                   checkout(token, buyer_accepts_marketing=False, customer={"first_name": "Bo"}))
    result = await client.get_workflow_handle(f"{tenant}:cart-recovery:checkout-{token}",
                                              result_type=CartRecoveryResult).result()
    assert result.status == "no_consent" and result.sent == []
    assert await _reminders(db, f"{tenant}:cart-recovery:checkout-{token}") == []

    for body, field in (({"steps": []}, "steps"),
                        ({"steps": [{"after_seconds": 5, "channel": "fax", "text": "x"}]}, "channel"),
                        ({"steps": [{"after_seconds": 9, "text": "a"}, {"after_seconds": 1, "text": "b"}]}, "steps"),
                        ({"discount_code": "no spaces"}, "discount_code")):
        r = await http.put(f"/v1/tenants/{tenant}/settings/cart-recovery", headers=tokens.client(tenant), json=body)
        assert r.status_code == 400 and field in r.text, (body, r.text)

    # Started by hand (a shop without webhooks): the same input over the API.
    r = await http.post("/v1/workflows/cart-recovery", headers=tokens.client(tenant), json={
        "tenant_id": tenant, "checkout_token": "manual-1"})
    assert r.status_code == 202, r.text
    result = await client.get_workflow_handle(r.json()["workflow_id"], result_type=CartRecoveryResult).result()
    assert result.status == "no_consent"
