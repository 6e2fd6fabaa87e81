"""Triggers over real HTTP with the real workers: signed webhooks (Shopify, Stripe, Lago, the
generic per-tenant HMAC) and platform events start workflows through the trigger table; a
redelivery starts nothing new; a missing, forged or stale signature starts nothing and is
logged without the secret. Senders sign as they do: stripe's own helper, Lago's RS256 JWT (its
default) or HMAC, HMACs for the rest."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import stripe
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.exceptions import NotFoundException
from pydantic import ValidationError
from temporalio.client import Client

import api.triggers
import api.webhooks
from api import inbox
from api.auth import mint_dev_token
from api.triggers import Event
from api.webhooks import MAX_BODY_BYTES, Unsigned
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import workflow_exists
from core.settings import LagoSettings, Settings

log = logging.getLogger(__name__)
# How many distinct orders the redelivery test sends, each 5 times at once.
ORDERS = 100
DELIVERIES = 5


def secret(value: Any) -> str:
    return value.get_secret_value()


async def shop_tenant(db: asyncpg.Pool, **settings: Any) -> tuple[str, str]:
    """An active tenant connected to a Shopify shop (its order settings); (tenant id, shop domain)."""
    tenant = unique("shop")
    domain = f"{tenant}.myshopify.com"
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO tenants (id, name, plan, owner_email, status)
               VALUES ($1, $2, 'starter', $3, 'active')""", tenant, f"Shop {tenant}", f"owner@{tenant}.example")
        await conn.execute("INSERT INTO tenant_settings (tenant_id, capability, settings) VALUES ($1, 'order', $2)",
                           tenant, {"shopify_shop_domain": domain, **settings})
    return tenant, domain


def shopify_order(order_id: int, total: float = 42.5, **kw: Any) -> dict[str, Any]:
    order = {"id": order_id, "name": f"#{order_id % 10000}", "email": "buyer@example.com", "currency": "USD",
             "total_price": f"{total:.2f}", "billing_address": {"country_code": "US"},
             "shipping_address": {"country_code": "US"},
             "line_items": [{"id": 1, "sku": "SOURDOUGH", "title": "Sourdough loaf", "quantity": 1,
                             "price": f"{total:.2f}"}]}
    order.update(kw)
    return order


def shopify_headers(settings: Settings, domain: str, body: bytes, topic: str = "orders/create") -> dict[str, str]:
    digest = hmac.new(secret(settings.shopify.webhook_secret).encode(), body, hashlib.sha256).digest()
    return {"content-type": "application/json", "x-shopify-topic": topic, "x-shopify-shop-domain": domain,
            "x-shopify-hmac-sha256": base64.b64encode(digest).decode(),
            "x-shopify-webhook-id": f"wh-{random.getrandbits(48)}"}


def generic_headers(tenant: str, key: str, body: bytes, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    sig = hmac.new(key.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-biz-tenant": tenant, "x-biz-timestamp": str(stamp),
            "x-biz-signature": f"v1={sig}"}


def order_id() -> int:
    return random.randrange(10**14, 10**15)


async def test_each_order_delivered_five_times_at_once_starts_exactly_one_workflow(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, client: Client
) -> None:
    tenant, domain = await shop_tenant(db)
    orders = [shopify_order(order_id(), total=10 + i) for i in range(ORDERS)]
    bodies = [json.dumps(o).encode() for o in orders]
    limit = asyncio.Semaphore(50)  # the test's HTTP connections, not a server limit

    async def deliver(body: bytes) -> httpx.Response:
        async with limit:
            return await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))

    started = time.monotonic()
    deliveries = [b for b in bodies for _ in range(DELIVERIES)]
    random.shuffle(deliveries)
    answers = await asyncio.gather(*(deliver(b) for b in deliveries))
    accepted_in = time.monotonic() - started

    by_workflow: dict[str, list[int]] = {}
    for r in answers:
        assert r.status_code in (200, 202), r.text
        by_workflow.setdefault(r.json()["workflow_id"], []).append(r.status_code)
    assert set(by_workflow) == {f"{tenant}:order:shopify-{o['id']}" for o in orders}
    # Per order: one delivery started it (202), the other four found it (200, same id).
    assert all(sorted(codes) == [200] * (DELIVERIES - 1) + [202] for codes in by_workflow.values())

    async def all_recorded() -> None:
        rows = await db.fetch("SELECT workflow_id, status FROM orders WHERE tenant_id = $1", tenant)
        assert len(rows) == ORDERS and {r["status"] for r in rows} == {"accepted"}, len(rows)

    await assert_eventually(all_recorded, timeout=120, interval=0.5)
    count = await client.count_workflows(f"BizTenantId = '{tenant}' AND BizCapability = 'order'")
    assert count.count == ORDERS
    log.warning("%d orders x %d deliveries: accepted in %.1f s, all recorded in %.1f s", ORDERS, DELIVERIES,
                accepted_in, time.monotonic() - started)


async def test_an_order_above_the_threshold_waits_for_the_client(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, tokens: Tokens
) -> None:
    tenant, domain = await shop_tenant(db, review_threshold=300, out_of_stock_skus=["RYE"])
    body = json.dumps(shopify_order(order_id(), total=900)).encode()
    r = await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    wf_id = r.json()["workflow_id"]

    async def listed() -> dict[str, Any]:
        page = (await http.get("/v1/pending-actions", headers=tokens.client(tenant))).json()
        mine = [a for a in page["items"] if a["workflow_id"] == wf_id]
        assert mine, page
        return mine[0]

    action = await assert_eventually(listed, timeout=60)
    assert action["request_id"] == "review" and "900.00" in action["title"]
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text

    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()
        assert view["status"] == "COMPLETED", view
        return view["result"]

    result = await assert_eventually(done, timeout=60)
    assert result["status"] == "accepted" and result["reviewed"] and result["decisions"][0]["decision"] == "approve"
    assert await db.fetchval("SELECT reviewed FROM orders WHERE workflow_id = $1", wf_id) is True

    # Out of stock: ends without asking anyone.
    body = json.dumps(shopify_order(order_id(), line_items=[
        {"sku": "RYE", "quantity": 1, "price": "42.50"}])).encode()
    r = await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))
    oos_id = r.json()["workflow_id"]

    async def out_of_stock() -> None:
        assert await db.fetchval("SELECT status FROM orders WHERE workflow_id = $1", oos_id) == "out_of_stock"

    await assert_eventually(out_of_stock, timeout=60)


async def test_missing_forged_and_stale_signatures_are_refused_and_start_nothing(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, domain = await shop_tenant(db)
    key = "generic-" + unique("secret")
    await db.execute("INSERT INTO webhook_secrets (tenant_id, secret) VALUES ($1, $2)", tenant, key)
    order = shopify_order(order_id())
    body = json.dumps(order).encode()
    good = shopify_headers(settings, domain, body)
    forged_body = json.dumps({**order, "total_price": "1.00"}).encode()
    stripe_body = json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {"object": {}}})
    stripe_secret = secret(settings.stripe.webhook_secret)
    generic_body = json.dumps({"id": "e1", "type": "order.created", "data": {}}).encode()
    lago_body = json.dumps({"webhook_type": "invoice.created"}).encode()

    refused = [
        ("shopify", body, {k: v for k, v in good.items() if k != "x-shopify-hmac-sha256"}),  # missing
        ("shopify", forged_body, good),  # the body changed after signing
        ("shopify", body, {**good, "x-shopify-hmac-sha256": base64.b64encode(b"x" * 32).decode()}),
        ("stripe", stripe_body.encode(), {"stripe-signature": stripe.WebhookSignature.generate_signature_header(
            stripe_body, stripe_secret, timestamp=int(time.time()) - 3600)}),  # stale
        ("stripe", stripe_body.encode(), {"stripe-signature": stripe.WebhookSignature.generate_signature_header(
            stripe_body, "whsec_someone_else")}),  # forged
        ("stripe", stripe_body.encode(), {}),  # missing
        ("generic", generic_body, generic_headers(tenant, key, generic_body, stamp=int(time.time()) - 301)),
        ("generic", generic_body, generic_headers(tenant, "not-the-tenant-secret", generic_body)),
        ("lago", lago_body, {"x-lago-signature": "AAAA", "x-lago-signature-algorithm": "hmac"}),
    ]
    caplog.set_level(logging.WARNING, logger="api.webhooks")
    for source, payload, headers in refused:
        r = await http.post(f"/v1/webhooks/{source}", content=payload, headers=headers)
        assert r.status_code == 401, (source, headers, r.text)
    assert not await workflow_exists(client, f"{tenant}:order:shopify-{order['id']}")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "api.webhooks"]
    assert len([line for line in lines if "refused (401)" in line]) == len(refused), lines
    text = "\n".join(lines)
    for s in (key, stripe_secret, secret(settings.shopify.webhook_secret), secret(settings.lago.webhook_secret)):
        assert s not in text

    # The same Shopify delivery, correctly signed, is accepted: the refusals above were the signatures.
    r = await http.post("/v1/webhooks/shopify", content=body, headers=good)
    assert r.status_code == 202, r.text


async def test_other_answers_unknown_source_bad_body_too_large_no_trigger(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool
) -> None:
    tenant, domain = await shop_tenant(db)
    assert (await http.post("/v1/webhooks/paypal", content=b"{}")).status_code == 404

    bad = b"{not json"
    r = await http.post("/v1/webhooks/shopify", content=bad, headers=shopify_headers(settings, domain, bad))
    assert r.status_code == 400, r.text
    no_id = json.dumps({"line_items": []}).encode()
    r = await http.post("/v1/webhooks/shopify", content=no_id, headers=shopify_headers(settings, domain, no_id))
    assert r.status_code == 400, r.text

    big = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await http.post("/v1/webhooks/shopify", content=big, headers=shopify_headers(settings, domain, big))
    assert r.status_code == 413

    # Signed by Stripe's own helper, an event type with no trigger: acknowledged, nothing started.
    payload = json.dumps({"id": "evt_" + unique("x"), "type": "customer.created", "data": {"object": {}}})
    header = stripe.WebhookSignature.generate_signature_header(payload, secret(settings.stripe.webhook_secret))
    r = await http.post("/v1/webhooks/stripe", content=payload, headers={"stripe-signature": header})
    assert r.status_code == 202 and r.json() == {"outcome": "ignored", "event_type": "customer.created",
                                                 "workflow_id": None, "run_id": None}
    # Lago's HMAC scheme, likewise.
    lago = json.dumps({"webhook_type": "invoice.created", "invoice": {}}).encode()
    sig = base64.b64encode(hmac.new(secret(settings.lago.webhook_secret).encode(), lago, hashlib.sha256).digest())
    r = await http.post("/v1/webhooks/lago", content=lago,
                        headers={"x-lago-signature": sig.decode(), "x-lago-signature-algorithm": "hmac"})
    assert r.status_code == 202 and r.json()["outcome"] == "ignored", r.text


async def test_a_trigger_an_operator_turns_off_is_followed_without_a_restart(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API reads a trigger's row at most every LOOKUP_CACHE_SECONDS: `enabled = false`
    takes effect within that time (shortened here), and on again likewise."""
    monkeypatch.setattr(api.triggers, "LOOKUP_CACHE_SECONDS", 0.5)
    tenant, domain = await shop_tenant(db)

    async def delivered() -> httpx.Response:
        body = json.dumps(shopify_order(order_id())).encode()
        return await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))

    async def outcome_is(expected: str) -> None:
        r = await delivered()
        assert r.status_code == 202 and r.json()["outcome"] == expected, r.text

    assert (await delivered()).json()["outcome"] == "started"
    where = "WHERE source = 'shopify' AND event_type = 'orders/create'"
    await db.execute(f"UPDATE triggers SET enabled = false {where}")
    try:
        await assert_eventually(lambda: outcome_is("ignored"), timeout=10, interval=0.2)
    finally:
        await db.execute(f"UPDATE triggers SET enabled = true {where}")
    await assert_eventually(lambda: outcome_is("started"), timeout=10, interval=0.2)


async def test_generic_webhook_accepts_both_secrets_during_a_rotation(
    http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    tenant, _ = await shop_tenant(db)
    old, new, expired = (f"{name}-{unique('k')}" for name in ("old", "new", "expired"))
    await db.execute(
        """INSERT INTO webhook_secrets (tenant_id, secret, expires_at) VALUES
           ($1, $2, now() + interval '1 day'), ($1, $3, NULL), ($1, $4, now() - interval '1 minute')""",
        tenant, old, new, expired)
    for key, status in ((old, 202), (new, 202), (expired, 401)):
        body = json.dumps({"id": unique("evt"), "type": "contact.updated", "data": {"email": "a@b.example"}}).encode()
        r = await http.post("/v1/webhooks/generic", content=body, headers=generic_headers(tenant, key, body))
        assert r.status_code == status, (key, r.text)
        if status == 202:
            assert r.json()["outcome"] == "ignored"  # signed right; no trigger for this type yet


async def test_platform_event_tenant_created_onboards_once(
    http: httpx.AsyncClient, settings: Settings, tokens: Tokens, db: asyncpg.Pool
) -> None:
    service = {"authorization": "Bearer " + mint_dev_token(settings, sub="svc:platform", roles=["super_admin"])}
    tenant = unique("newco")
    event = {"id": unique("evt"), "type": "tenant.created",
             "data": {"tenant_id": tenant, "name": "New Co", "owner_email": f"owner@{tenant}.example"}}
    assert (await http.post("/v1/events", json=event)).status_code == 401
    assert (await http.post("/v1/events", json=event, headers=tokens.admin())).status_code == 403

    r = await http.post("/v1/events", json=event, headers=service)
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    assert r.json()["workflow_id"] == f"{tenant}:onboarding:{tenant}"
    again = await http.post("/v1/events", json={**event, "id": unique("evt")}, headers=service)
    assert again.status_code == 200 and again.json()["workflow_id"] == r.json()["workflow_id"]

    async def active() -> None:
        assert await db.fetchval("SELECT status FROM tenants WHERE id = $1", tenant) == "active"

    await assert_eventually(active, timeout=60)
    bad = {**event, "data": {"tenant_id": "Not A Slug"}}
    assert (await http.post("/v1/events", json=bad, headers=service)).status_code == 400
    other = {**event, "type": "tenant.deleted"}
    r = await http.post("/v1/events", json=other, headers=service)
    assert r.status_code == 202 and r.json()["outcome"] == "ignored"


# --- replays, the inbox, the shop domain ---------------------------------------------------

def lago_headers(settings: Settings, body: bytes, key: str) -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret(settings.lago.webhook_secret).encode(), body, hashlib.sha256).digest())
    return {"content-type": "application/json", "x-lago-signature": sig.decode(),
            "x-lago-signature-algorithm": "hmac", "x-lago-unique-key": key}


def stripe_headers(settings: Settings, payload: str) -> dict[str, str]:
    """Signed now by Stripe's own helper, as every (re)delivery is."""
    return {"content-type": "application/json", "stripe-signature": stripe.WebhookSignature.generate_signature_header(
        payload, secret(settings.stripe.webhook_secret))}


async def inbox_rows(db: asyncpg.Pool, source: str, **where: Any) -> list[asyncpg.Record]:
    clauses = " AND ".join(f"{k} = ${i + 2}" for i, k in enumerate(where))
    return await db.fetch(
        f"SELECT * FROM webhook_inbox WHERE source = $1{' AND ' + clauses if clauses else ''} ORDER BY id",
        source, *where.values())


async def test_a_replayed_shopify_delivery_starts_nothing_even_under_other_headers(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, client: Client
) -> None:
    tenant, domain = await shop_tenant(db)
    other, other_domain = await shop_tenant(db)
    order = shopify_order(order_id())
    body = json.dumps(order).encode()
    event_id = unique("evt")
    headers = {**shopify_headers(settings, domain, body), "x-shopify-event-id": event_id,
               "x-shopify-triggered-at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    r = await http.post("/v1/webhooks/shopify", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    wf_id = f"{tenant}:order:shopify-{order['id']}"
    assert r.json()["workflow_id"] == wf_id

    # Shopify's own retry (same ids), then the captured body replayed under fresh ids and the
    # shop domain of another tenant (Shopify signs the body, not its headers).
    forged = {**shopify_headers(settings, other_domain, body), "x-shopify-event-id": unique("evt")}
    for again in (headers, forged):
        r = await http.post("/v1/webhooks/shopify", content=body, headers=again)
        assert r.status_code == 200, r.text
        assert r.json() == {"outcome": "duplicate", "event_type": "orders/create", "workflow_id": wf_id,
                            "run_id": r.json()["run_id"]}
    assert not await workflow_exists(client, f"{other}:order:shopify-{order['id']}")

    # A delivery Shopify dates four days back is refused, whatever its body.
    stale_order = shopify_order(order_id())
    stale = json.dumps(stale_order).encode()
    old = (datetime.now(UTC) - timedelta(days=4)).isoformat()
    r = await http.post("/v1/webhooks/shopify", content=stale,
                        headers={**shopify_headers(settings, domain, stale), "x-shopify-triggered-at": old})
    assert r.status_code == 401 and "replay window" in r.text, r.text
    assert not await workflow_exists(client, f"{tenant}:order:shopify-{stale_order['id']}")
    bad_time = {**shopify_headers(settings, domain, stale), "x-shopify-triggered-at": "yesterday"}
    assert (await http.post("/v1/webhooks/shopify", content=stale, headers=bad_time)).status_code == 400

    # One delivery kept, as received, with what it started.
    (row,) = await inbox_rows(db, "shopify", event_id=event_id)
    assert (row["tenant_id"], row["event_type"], row["outcome"], row["workflow_id"]) == (
        tenant, "orders/create", "started", wf_id)
    assert bytes(row["body"]) == body and row["run_id"] and row["sent_at"] is not None
    assert len(await inbox_rows(db, "shopify", body_sha256=hashlib.sha256(body).digest())) == 1


async def test_lago_and_stripe_replays_answer_duplicate_and_events_without_a_trigger_are_kept(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, client: Client
) -> None:
    # Lago: no trigger for invoice.created, yet the event is kept; its retry (same unique key)
    # and the body under a new key are replays.
    lago = json.dumps({"webhook_type": "invoice.created", "object_type": "invoice",
                       "invoice": {"lago_id": unique("inv")}}).encode()
    key = unique("lago")
    r = await http.post("/v1/webhooks/lago", content=lago, headers=lago_headers(settings, lago, key))
    assert r.status_code == 202 and r.json()["outcome"] == "ignored", r.text
    for again in (key, unique("lago")):
        r = await http.post("/v1/webhooks/lago", content=lago, headers=lago_headers(settings, lago, again))
        assert r.status_code == 200 and r.json()["outcome"] == "duplicate", r.text
    (row,) = await inbox_rows(db, "lago", event_id=key)
    assert (row["outcome"], row["event_type"], row["workflow_id"], bytes(row["body"])) == (
        "no_trigger", "invoice.created", None, lago)

    # Stripe: invoice.paid signals (with start) the dunning once; Stripe's redelivery of the
    # same event, signed anew, changes nothing.
    tenant, _ = await shop_tenant(db)
    invoice = "in_" + unique("x").replace("-", "")
    event = {"id": "evt_" + unique("x"), "type": "invoice.paid", "created": int(time.time()),
             "data": {"object": {"id": invoice, "amount_due": 1200, "currency": "usd",
                                 "metadata": {"tenant_id": tenant}}}}
    payload = json.dumps(event)
    r = await http.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(settings, payload))
    assert r.status_code == 202 and r.json()["outcome"] == "signalled", r.text
    wf_id = r.json()["workflow_id"]
    again = await http.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(settings, payload))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    assert again.json()["workflow_id"] == wf_id
    signals = [e async for e in client.get_workflow_handle(wf_id).fetch_history_events()
               if e.HasField("workflow_execution_signaled_event_attributes")]
    assert len(signals) == 1  # the first delivery's
    (row,) = await inbox_rows(db, "stripe", event_id=event["id"])
    assert (row["outcome"], row["tenant_id"], row["workflow_id"]) == ("signalled", tenant, wf_id)

    # An event Stripe created four days ago, signed now, is past the replay window.
    old = {**event, "id": "evt_" + unique("x"), "created": int(time.time()) - 4 * 86400}
    payload = json.dumps(old)
    r = await http.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(settings, payload))
    assert r.status_code == 401 and "replay window" in r.text, r.text
    assert await inbox_rows(db, "stripe", event_id=old["id"]) == []

    # What the inbox cannot keep is refused naming it, never a 500.
    for bad, named in (({"type": ""}, "event type"), ({"type": "x" * 201}, "event type"),
                       ({"type": "invoice.paid\u0000"}, "NUL"),
                       ({"data": {"object": {"id": invoice, "metadata": {"tenant_id": "a\u0000b"}}}}, "NUL")):
        payload = json.dumps({**event, "id": "evt_" + unique("x"), **bad})
        r = await http.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(settings, payload))
        assert r.status_code == 400 and named in r.text, (bad, r.text)


def lago_jwt_headers(key: rsa.RSAPrivateKey, body: bytes, unique_key: str) -> dict[str, str]:
    """Signed as a Lago server signs by default (``jwt``): an RS256 JWT of Lago's private key whose
    ``data`` claim is the body, issued by Lago's URL, no expiry."""
    token = jwt.encode({"data": body.decode(), "iss": "http://lago-api.example:3000"}, key, algorithm="RS256")
    return {"content-type": "application/json", "x-lago-signature": token, "x-lago-signature-algorithm": "jwt",
            "x-lago-unique-key": unique_key}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_lago_jwt_signatures_are_verified_with_lagos_public_key(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, lago_signing_key: rsa.RSAPrivateKey
) -> None:
    # Lago's default signature; the body as Lago writes it (UTF-8, not ASCII-escaped).
    body = json.dumps({"webhook_type": "invoice.created", "object_type": "invoice",
                       "invoice": {"lago_id": unique("inv"), "customer": {"name": "Café Zoë"}}},
                      ensure_ascii=False).encode()
    key = unique("lago")
    r = await http.post("/v1/webhooks/lago", content=body, headers=lago_jwt_headers(lago_signing_key, body, key))
    assert r.status_code == 202 and r.json()["outcome"] == "ignored", r.text
    again = await http.post("/v1/webhooks/lago", content=body, headers=lago_jwt_headers(lago_signing_key, body, key))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    (row,) = await inbox_rows(db, "lago", event_id=key)
    assert (row["outcome"], row["event_type"], bytes(row["body"])) == ("no_trigger", "invoice.created", body)

    # Forgeries, each of a body never seen: another key's JWT; Lago's JWT of another body; an
    # HS256 token keyed with the public key itself (algorithm confusion); an unsigned token; an
    # algorithm Lago does not have. Each is refused 401 and nothing is kept.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = settings.lago.webhook_public_key.encode()

    def forged_body() -> bytes:
        return json.dumps({"webhook_type": "invoice.created", "invoice": {"lago_id": unique("inv")}}).encode()

    def hs256_with_public_key(b: bytes) -> str:
        head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = _b64url(json.dumps({"data": b.decode()}).encode())
        return f"{head}.{claims}." + _b64url(hmac.new(public_pem, f"{head}.{claims}".encode(), hashlib.sha256).digest())

    def unsigned(b: bytes) -> str:
        return f"{_b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64url(json.dumps({'data': b.decode()}).encode())}."

    forgeries = {
        "another key": lambda b: lago_jwt_headers(other_key, b, unique("lago")),
        "another body": lambda b: lago_jwt_headers(lago_signing_key, forged_body(), unique("lago")),
        "HS256 with the public key": lambda b: {**lago_jwt_headers(lago_signing_key, b, unique("lago")),
                                                "x-lago-signature": hs256_with_public_key(b)},
        "alg none": lambda b: {**lago_jwt_headers(lago_signing_key, b, unique("lago")), "x-lago-signature": unsigned(b)},
        "unknown algorithm": lambda b: {**lago_jwt_headers(lago_signing_key, b, unique("lago")),
                                        "x-lago-signature-algorithm": "rsa-sha1"},
    }
    for what, headers_of in forgeries.items():
        b = forged_body()
        r = await http.post("/v1/webhooks/lago", content=b, headers=headers_of(b))
        assert r.status_code == 401 and r.json()["detail"] == "invalid webhook signature", (what, r.text)
        assert await inbox_rows(db, "lago", body_sha256=hashlib.sha256(b).digest()) == [], what


async def test_lago_keys_are_checked_at_start_and_each_algorithm_needs_its_own(
    settings: Settings, lago_signing_key: rsa.RSAPrivateKey
) -> None:
    pem = settings.lago.webhook_public_key
    # As Lago's API answers it (base64 of the PEM), or as PEM: the same key.
    assert LagoSettings(webhook_public_key=base64.b64encode(pem.encode()).decode()).webhook_public_key == pem
    for bad in ("not a key", base64.b64encode(b"not a pem").decode(),
                ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()):
        with pytest.raises(ValidationError, match="BIZ_LAGO_WEBHOOK_PUBLIC_KEY"):
            LagoSettings(webhook_public_key=bad)

    class Delivery:  # what the verifier reads of a request
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    body = json.dumps({"webhook_type": "invoice.created"}).encode()
    jwt_signed = Delivery(lago_jwt_headers(lago_signing_key, body, unique("lago")))
    hmac_only = settings.model_copy(update={"lago": settings.lago.model_copy(update={"webhook_public_key": None})})
    with pytest.raises(Unsigned, match="BIZ_LAGO_WEBHOOK_PUBLIC_KEY is not set"):
        await api.webhooks._lago(jwt_signed, body, hmac_only, None)  # type: ignore[arg-type]
    neither = settings.model_copy(update={"lago": LagoSettings()})
    with pytest.raises(NotFoundException):
        await api.webhooks._lago(jwt_signed, body, neither, None)  # type: ignore[arg-type]
    key_only = settings.model_copy(update={"lago": LagoSettings(webhook_public_key=pem)})
    event = await api.webhooks._lago(jwt_signed, body, key_only, None)  # type: ignore[arg-type]
    assert (event.source, event.type) == ("lago", "invoice.created")
    hmac_signed = Delivery(lago_headers(settings, body, unique("lago")))
    with pytest.raises(Unsigned, match="BIZ_LAGO_WEBHOOK_SECRET is not set"):
        await api.webhooks._lago(hmac_signed, body, key_only, None)  # type: ignore[arg-type]


async def test_a_shop_domain_belongs_to_one_tenant(db: asyncpg.Pool) -> None:
    tenant, domain = await shop_tenant(db)
    with pytest.raises(asyncpg.UniqueViolationError) as refused:
        await shop_tenant(db, shopify_shop_domain=domain.upper())
    assert refused.value.constraint_name == "tenant_settings_shopify_shop_domain"
    other, _ = await shop_tenant(db)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("UPDATE tenant_settings SET settings = settings || $2 WHERE tenant_id = $1 "
                         "AND capability = 'order'", other, {"shopify_shop_domain": domain})
    assert await db.fetchval("SELECT tenant_id FROM tenant_settings WHERE capability = 'order' "
                             "AND lower(settings->>'shopify_shop_domain') = $1", domain) == tenant


async def test_deliveries_at_the_same_time_are_each_claimed_and_settled_as_alone_in_fewer_statements(
        db: asyncpg.Pool) -> None:
    """Deliveries claimed at once share statements, and each gets what it would get alone: a new
    one is kept, the second copy of one delivered twice at once is its replay (by body, or by the
    sender's id with another body), a failed one is taken over. Their outcomes, settled at once,
    are each written; a statement that fails fails the settles it carried (their deliveries
    answer 5xx and are taken over), and the next ones are written."""

    class Counted:  # the pool, counting the statements that reach it
        def __init__(self) -> None:
            self.statements = 0

        async def fetch(self, *args: Any) -> Any:
            self.statements += 1
            return await db.fetch(*args)

        async def fetchrow(self, *args: Any) -> Any:
            self.statements += 1
            return await db.fetchrow(*args)

        async def execute(self, *args: Any) -> str:
            self.statements += 1
            return await db.execute(*args)

    def event(event_id: str | None = None) -> tuple[Event, bytes]:
        e = Event(source="stripe", type="invoice.paid", id=event_id or "evt_" + unique("many"), tenant_id="acme",
                  payload={})
        return e, json.dumps({"id": e.id}).encode()

    failed_event, failed_body = event()
    failed = await inbox.claim(db, failed_event, failed_body, workflow_id="acme:dunning:failed", outcome="received")
    await inbox.settle(db, failed.id, "failed")
    new = [event() for _ in range(12)]
    twice = [event() for _ in range(4)]
    same_id, other_body = event(), b'{"another": "body"}'
    given = [*new, *(d for pair in zip(twice, twice) for d in pair), same_id, (same_id[0], other_body),
             (failed_event, failed_body)]
    pool = Counted()
    claims = await asyncio.gather(*(inbox.claim(pool, e, b, workflow_id=f"acme:dunning:{e.id}", outcome="received")  # type: ignore[arg-type]
                                    for e, b in given))
    assert all(c.fresh and c.workflow_id == f"acme:dunning:{e.id}" for c, (e, _) in zip(claims[:12], new))
    for first, second in zip(claims[12:20:2], claims[13:20:2]):
        assert first.fresh and not second.fresh and second.id == first.id
    assert claims[20].fresh and not claims[21].fresh and claims[21].id == claims[20].id
    assert claims[22].fresh and claims[22].id == failed.id  # taken over
    assert len({c.id for c in claims}) == 12 + 4 + 1 + 1
    assert pool.statements < len(given) // 2, pool.statements

    kept = [c for c in claims if c.fresh]
    pool.statements = 0
    await asyncio.gather(*(inbox.settle(pool, c.id, "started" if i % 2 else "duplicate", run_id=f"run-{i}")  # type: ignore[arg-type]
                           for i, c in enumerate(kept)))
    rows = await db.fetch("SELECT id, outcome, run_id FROM webhook_inbox WHERE id = ANY($1)", [c.id for c in kept])
    assert {r["id"]: (r["outcome"], r["run_id"]) for r in rows} == {
        c.id: ("started" if i % 2 else "duplicate", f"run-{i}") for i, c in enumerate(kept)}
    assert 1 <= pool.statements <= 2, pool.statements

    class Down(Counted):
        async def execute(self, *args: Any) -> str:
            self.statements += 1
            if self.statements == 1:
                raise ConnectionResetError("Postgres went away")
            return await db.execute(*args)

    down = Down()
    results = await asyncio.gather(*(inbox.settle(down, c.id, "failed") for c in kept[:5]),  # type: ignore[arg-type]
                                   return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results), results
    await inbox.settle(down, kept[0].id, "failed")  # type: ignore[arg-type]
    assert await db.fetchval("SELECT outcome FROM webhook_inbox WHERE id = $1", kept[0].id) == "failed"


async def test_two_api_processes_claiming_the_same_deliveries_at_once_start_each_once(
        db: asyncpg.Pool, database_url: str) -> None:
    """Two API processes (two pools, so two batches) get the same deliveries at the same moment,
    in opposite orders: every delivery is kept by exactly one of them, and the other sees its
    replay; neither batch waits forever on the other's rows."""
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        for _ in range(5):
            given = []
            for _ in range(6):
                e = Event(source="shopify", type="orders/create", id="evt_" + unique("both"), tenant_id=None,
                          payload={})
                given.append((e, json.dumps({"id": e.id}).encode()))

            async def claims(pool: asyncpg.Pool, deliveries: list[tuple[Event, bytes]]) -> list[inbox.Claim]:
                return await asyncio.gather(*(inbox.claim(pool, e, b, workflow_id=f"shop:order:{e.id}",
                                                          outcome="received") for e, b in deliveries))

            mine, theirs = await asyncio.wait_for(asyncio.gather(claims(db, given), claims(other, given[::-1])), 30)
            for a, b in zip(mine, theirs[::-1], strict=True):
                assert a.id == b.id and a.fresh != b.fresh, (a, b)
    finally:
        await other.close()

async def test_a_failed_delivery_is_taken_over_by_the_retry_and_old_ones_are_pruned(db: asyncpg.Pool) -> None:
    event = Event(source="stripe", type="invoice.paid", id="evt_" + unique("x"), tenant_id="acme", payload={})
    body = json.dumps({"id": event.id}).encode()
    first = await inbox.claim(db, event, body, workflow_id="acme:dunning:x", outcome="received")
    assert first.fresh
    # While the first is being handled, a retry is a replay.
    assert not (await inbox.claim(db, event, body, workflow_id="acme:dunning:x", outcome="received")).fresh
    await inbox.settle(db, first.id, "failed")  # e.g. Temporal unreachable: answered 503
    retry = await inbox.claim(db, event, body, workflow_id="acme:dunning:x", outcome="received")
    assert (retry.fresh, retry.id) == (True, first.id)
    await inbox.settle(db, retry.id, "signalled", workflow_id="acme:dunning:x", run_id="r1")
    done = await inbox.claim(db, event, body, workflow_id="acme:dunning:x", outcome="received")
    assert (done.fresh, done.outcome, done.run_id) == (False, "signalled", "r1")

    # Retention: a delivery older than it is deleted, a recent one kept.
    old = Event(source="stripe", type="invoice.paid", id="evt_" + unique("x"), tenant_id="acme", payload={})
    kept = await inbox.claim(db, old, json.dumps({"id": old.id}).encode(), workflow_id=None, outcome="no_trigger")
    await db.execute("UPDATE webhook_inbox SET received_at = now() - interval '31 days' WHERE id = $1", kept.id)
    assert await inbox.prune(db, timedelta(days=30)) >= 1
    assert await db.fetchval("SELECT count(*) FROM webhook_inbox WHERE id = ANY($1)", [kept.id, first.id]) == 1
    with pytest.raises(ValueError, match="must cover"):
        Settings(_env_file=None, webhooks={"replay_window_hours": 72, "inbox_retention_days": 2})
