"""An approval's events reach the tenant's own systems as signed webhooks: a shop registers an
endpoint, an order over its review threshold opens a review, and the receiver gets
``approval.requested`` and, once the client decides, ``approval.decided``, each verified with
the Standard Webhooks library as a receiver would."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook

from api.app import create_app
from api.auth import mint_dev_token
from core.names import TASK_QUEUES
from core.settings import OutboundWebhookSettings, Settings
from hitl.protocol import action_id
from tests.support import assert_eventually, connect_when_ready, in_namespace, platform_workers, serve, unique
from tests.test_orders import authorized_payment
from tests.test_outbound_webhooks import Receiver


@pytest.fixture
async def ours(settings: Settings, namespace: str) -> Settings:
    # Receivers on loopback, as `bizosaas dev` allows.
    return in_namespace(settings, namespace).model_copy(
        update={"outbound": OutboundWebhookSettings(allow_private_networks=True)})


async def test_an_orders_review_is_sent_to_the_shops_endpoint_and_verifies(
    ours: Settings, db: asyncpg.Pool, localstripe_url: str, mcp_sandbox: str,
) -> None:
    shop = unique("hookshop")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, 'Shop', 'starter', "
                     "$2, 'active')", shop, f"owner@{shop}.example")
    client_hdr = {"authorization": f"Bearer {mint_dev_token(ours, sub=f'owner@{shop}', roles=['client'], tenant_id=shop)}"}
    admin_hdr = {"authorization": f"Bearer {mint_dev_token(ours, sub='ops@bizosaas', roles=['admin'])}"}
    intent = await authorized_payment(localstripe_url, shop, 90000)
    receiver = Receiver()
    temporal = await connect_when_ready(ours)
    async with serve(receiver) as hook_url, serve(create_app(ours)) as api_url, \
            platform_workers(temporal, ours, db, TASK_QUEUES), httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        r = await http.post(f"/v1/tenants/{shop}/webhook-endpoints", headers=client_hdr,
                            json={"url": hook_url + "/hooks", "event_types": ["approval.requested", "approval.decided"]})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        r = await http.post("/v1/workflows/order", headers=admin_hdr, json={
            "tenant_id": shop, "order_key": "o-1", "total": 900.0, "customer_email": "ann@example.com",
            "lines": [{"sku": "SOUR-1", "quantity": 2, "unit_price": 450.0, "title": "Sourdough"}],
            "billing_country": "US", "shipping_country": "US", "payment_intent_id": intent})
        assert r.status_code == 202, r.text
        wf_id = r.json()["workflow_id"]

        def events() -> list[dict]:
            # Every request verifies with the endpoint's secret, as the receiver's library checks it.
            return [json.loads(Webhook(secret).verify(body, headers) and body) for headers, body in receiver.received]

        async def requested() -> dict:
            got = [e for e in events() if e["type"] == "approval.requested"]
            assert got, receiver.received
            return got[0]

        first = await assert_eventually(requested, timeout=60, interval=0.3)
        assert first["data"]["workflow_id"] == wf_id and first["data"]["action_id"] == action_id(wf_id, "review")
        r = await http.post(f"/v1/pending-actions/{action_id(wf_id, 'review')}/decision", headers=client_hdr,
                            json={"decision": "approve"})
        assert r.status_code == 200, r.text

        async def decided() -> dict:
            got = [e for e in events() if e["type"] == "approval.decided"]
            assert got, [e["type"] for e in events()]
            return got[0]

        last = await assert_eventually(decided, timeout=60, interval=0.3)
        assert last["data"]["outcome"] == "approved" and last["data"]["decided_by"] == f"owner@{shop}"
        # A forged copy does not verify.
        headers, body = receiver.received[0]
        with pytest.raises(Exception):
            Webhook(secret).verify(body + b" ", headers)
        assert {h["webhook-id"] for h, _ in receiver.received} == {
            f"{wf_id}:approval:review:requested", f"{wf_id}:approval:review:decided"}
        await asyncio.wait_for(temporal.get_workflow_handle(wf_id).result(), 60)
