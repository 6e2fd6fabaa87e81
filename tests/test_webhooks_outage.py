"""Webhooks while no worker runs: every accepted delivery is a started workflow, so none is lost;
they all run once a worker comes back. Runs in a namespace of its own (the session's platform
worker polls the default one), with the real API and, later, the real workers."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
from temporalio.client import WorkflowExecutionStatus

from api.app import create_app
from tests.support import assert_eventually, connect_when_ready, in_namespace, platform_workers, serve
from tests.test_webhooks import order_id, shop_tenant, shopify_headers, shopify_order
from core.settings import Settings
from core.names import TASK_QUEUES

DELIVERIES = 20


async def test_deliveries_accepted_while_the_worker_is_down_all_run_after_it_restarts(
    settings: Settings, db: asyncpg.Pool, namespace: str, mcp_sandbox: str
) -> None:
    ns_settings = in_namespace(settings, namespace)
    client = await connect_when_ready(ns_settings)
    tenant, domain = await shop_tenant(db)
    orders = [shopify_order(order_id()) for _ in range(DELIVERIES)]
    async with serve(create_app(ns_settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        async def deliver(order: dict) -> str:
            body = json.dumps(order).encode()
            r = await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))
            assert r.status_code == 202, r.text
            return r.json()["workflow_id"]

        ids = await asyncio.gather(*(deliver(o) for o in orders))
    assert len(set(ids)) == DELIVERIES
    # Accepted, not run: nothing has been recorded while no worker polls.
    for wf_id in ids:
        assert (await client.get_workflow_handle(wf_id).describe()).status == WorkflowExecutionStatus.RUNNING
    assert await db.fetchval("SELECT count(*) FROM orders WHERE tenant_id = $1", tenant) == 0

    async with platform_workers(client, ns_settings, db, TASK_QUEUES):
        async def all_recorded() -> None:
            assert await db.fetchval("SELECT count(*) FROM orders WHERE tenant_id = $1", tenant) == DELIVERIES

        await assert_eventually(all_recorded, timeout=120, interval=0.5)
        results = [await client.get_workflow_handle(wf_id).result() for wf_id in ids]
    assert {r["status"] for r in results} == {"accepted"}
    assert sorted(r["order_key"] for r in results) == sorted(f"shopify-{o['id']}" for o in orders)
