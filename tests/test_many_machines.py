"""Many machines, shown without Docker: two API processes and two workers per task queue against
one Temporal server and one Postgres. In the middle of 500 onboardings and 100 order reviews
(each decided by the shop's client through the API), one API process and one worker of each
queue are killed (SIGKILL: no draining). The clients go on through the API that is left, as
a load balancer would send them, retrying what got no answer with the same Idempotency-Key.
Every workflow completes, no outside effect happens twice (one Stripe customer per tenant, one
capture per payment), no decision is lost.

The image and the compose file that run the same processes on Docker hosts are checked for
what can be read without Docker (Docker does not run here)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import stripe
import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from api.auth import mint_dev_token
from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE
from core.settings import Settings
from hitl.protocol import action_id
from tests.support import (
    STRIPE_TEST_KEY,
    connect_when_ready,
    free_port,
    in_namespace,
    unique,
    worker_process,
)
from tests.test_orders import authorized_payment

pytestmark = pytest.mark.long(seconds=140)

ROOT = Path(__file__).resolve().parent.parent
STARTS = int(os.environ.get("BIZ_TEST_MANY_STARTS", "500"))
ORDERS = int(os.environ.get("BIZ_TEST_MANY_ORDERS", "100"))
IN_FLIGHT = 8


# --- what can be read without Docker -------------------------------------------------------

def _setting_names() -> set[str]:
    names = set()
    for group, field in Settings.model_fields.items():
        model = field.annotation
        sub = getattr(model, "model_fields", None)
        if sub:
            names |= {f"BIZ_{group}_{name}".upper() for name in sub}
        else:
            names.add(f"BIZ_{group}".upper())
    return names


def test_the_compose_file_runs_one_worker_deployment_per_queue_with_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    queues = []
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd[:1] == ["worker"]:
            queues += [cmd[i + 1] for i, a in enumerate(cmd) if a == "--queue"]
    assert sorted(queues) == sorted(TASK_QUEUES), queues
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", "worker-workflows", "worker-integrations", "worker-agents"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    known = _setting_names()
    used = {k for svc in services.values() for k in (svc.get("environment") or {}) if k.startswith("BIZ_")}
    assert used and used <= known | {"BIZ_DB_PASSWORD"}, sorted(used - known)
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and "AS build" in stages[0]
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["bizosaas"]' in dockerfile


# --- two of everything, killed in the middle ---------------------------------------------

class Cluster:
    """The API processes the clients reach, in the order a load balancer would try them."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.alive = list(urls)
        self.retried = 0

    async def call(self, http: httpx.AsyncClient, i: int, method: str, path: str, *,
                   attempts: list[int] | None = None, **kw: Any) -> httpx.Response:
        """Round robin over the live APIs; a call that gets no answer (connection refused or cut)
        goes to the next one, as a client retries through a load balancer. ``attempts`` gets how
        many requests the call took."""
        for attempt in range(40):
            if attempts is not None:
                attempts.append(attempt + 1)
            live = self.alive or self.urls
            url = live[(i + attempt) % len(live)]
            try:
                r = await http.request(method, url + path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                    httpx.ReadTimeout):
                self.retried += 1
                await asyncio.sleep(0.2)
                continue
            if r.status_code in (429, 503):  # too fast, or a decision its worker did not take in time
                self.retried += 1
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 2.0))
                continue
            return r
        raise AssertionError(f"{method} {path}: no API answered")


@pytest.fixture
async def ours(settings: Settings, namespace: str) -> Settings:
    return in_namespace(settings, namespace)


async def _healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"API exited with {proc.returncode}"
            try:
                if (await http.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError(f"{url} not healthy in {timeout} s")


async def _stripe_customers(url: str) -> dict[str, int]:
    """Stripe customers per tenant (metadata), every page."""
    sc = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, http_client=stripe.HTTPXClient())
    counts: dict[str, int] = {}
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await sc.v1.customers.list_async(params)
        for c in page.data:
            t = c.metadata.to_dict().get("tenant_id") if c.metadata else None
            if t:
                counts[t] = counts.get(t, 0) + 1
        if not page.has_more or not page.data:
            return counts
        params["starting_after"] = page.data[-1].id


async def test_killing_one_api_and_one_worker_per_queue_mid_run_loses_and_repeats_nothing(
    ours: Settings, db: asyncpg.Pool, localstripe_url: str, mcp_sandbox: str, tmp_path: Path,
) -> None:
    run = unique("mm")
    shop = f"{run}-shop"
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, 'Shop', 'starter', "
                     "'owner@shop.example', 'active')", shop)
    admin = {"authorization": f"Bearer {mint_dev_token(ours, sub='ops@bizosaas', roles=['admin'])}"}
    client_hdr = {"authorization": f"Bearer {mint_dev_token(ours, sub=f'owner@{shop}', roles=['client'], tenant_id=shop)}"}
    sem = asyncio.Semaphore(16)

    async def payment(i: int) -> str:
        async with sem:
            return await authorized_payment(localstripe_url, shop, 90000 + i)

    intents = await asyncio.gather(*(payment(i) for i in range(ORDERS)))

    api_ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in api_ports]
    log = tmp_path / "processes.log"
    async with AsyncExitStack() as stack:
        def spawn(queues: list[str], command: tuple[str, ...] = ("worker",)) -> Any:
            return stack.enter_async_context(worker_process(
                ours, queues, tmp_path / "state", log, command=command,
                # One shop's 100 orders in a minute: above the default per-tenant start rate.
                extra_env={"BIZ_API_START_RATE_PER_MINUTE": "100000", "BIZ_API_START_BURST": "1000",
                           # The sandbox MCP server of the session (workers seed the registry with it).
                           "BIZ_WORKER_MCP_URLS": json.dumps({"sandbox": mcp_sandbox})}))

        apis = [await spawn([], ("api", "--port", str(p))) for p in api_ports]
        flows = [await spawn([WORKFLOWS_QUEUE]) for _ in range(2)]
        sides = [await spawn([INTEGRATIONS_QUEUE, AGENTS_QUEUE]) for _ in range(2)]
        for url, proc in zip(urls, apis):
            await _healthy(url, proc)
        temporal = await connect_when_ready(ours)
        cluster = Cluster(urls)
        stats = {"starts_answered": 0, "decisions": 0, "already_decided": 0, "kills": 0}
        killed = asyncio.Event()

        def kill_half() -> None:
            """One API and one worker of each queue, without warning."""
            for proc in (apis[1], flows[1], sides[1]):
                proc.send_signal(signal.SIGKILL)
                stats["kills"] += 1
            cluster.alive = [urls[0]]
            killed.set()

        onboard_ids: list[str] = []
        order_ids: list[str] = []

        async with httpx.AsyncClient(timeout=30) as http:
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def start(i: int, path: str, body: dict[str, Any], key: str, into: list[str]) -> None:
                async with gate:
                    r = await cluster.call(http, i, "POST", path, json=body,
                                           headers={**admin, "idempotency-key": key})
                    assert r.status_code == 202, (path, r.status_code, r.text)
                    into.append(r.json()["workflow_id"])
                    stats["starts_answered"] += 1
                    if stats["starts_answered"] == (STARTS + ORDERS) // 2 and not killed.is_set():
                        kill_half()

            async def decide(i: int, aid: str) -> None:
                attempts: list[int] = []
                r = await cluster.call(http, i, "POST", f"/v1/pending-actions/{aid}/decision",
                                       json={"decision": "approve"}, headers=client_hdr, attempts=attempts)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                if r.status_code == 409 and (body.get("code") == "already_decided" or (
                        body.get("code") == "approval_closed" and attempts[-1] > 1)):
                    # Its answer was lost (the killed API, or a 503 while its worker was gone): the
                    # decision had been taken. Asked again, the approval says so, or, once the
                    # order's workflow has completed, that it is closed. The audit rows and the
                    # orders below show each decision taken once.
                    stats["already_decided"] += 1
                else:
                    assert r.status_code == 200, (r.status_code, r.text)
                stats["decisions"] += 1

            async def decide_as_they_open() -> None:
                """The shop's client works through its Pending Actions as they appear, as the
                portal shows them (one list call a second, not one call per order)."""
                taken: set[str] = set()
                tasks = []
                i = 0
                while len(taken) < ORDERS:
                    r = await cluster.call(http, i, "GET", "/v1/pending-actions", params={"limit": 100},
                                           headers=client_hdr)
                    assert r.status_code == 200, r.text
                    for item in r.json()["items"]:
                        if item["action_id"] not in taken:
                            taken.add(item["action_id"])
                            i += 1
                            tasks.append(asyncio.create_task(decide(i, item["action_id"])))
                    await asyncio.sleep(1)
                await asyncio.gather(*tasks)

            orders = [
                start(i, "/v1/workflows/order", {
                    "tenant_id": shop, "order_key": f"o{i}", "total": 900.0, "customer_email": "ann@example.com",
                    "lines": [{"sku": "SOUR-1", "quantity": 2, "unit_price": 450.0, "title": "Sourdough"}],
                    "billing_country": "US", "shipping_country": "US", "payment_intent_id": intents[i]},
                    f"{run}-order-{i}", order_ids)
                for i in range(ORDERS)]
            onboardings = [
                start(i, "/v1/workflows/onboarding", {
                    "tenant_id": f"{run}-t{i}", "name": f"Tenant {i}", "owner_email": f"owner{i}@t.example"},
                    f"{run}-onboard-{i}", onboard_ids)
                for i in range(STARTS)]
            # Interleaved: an order every fifth start.
            mixed = [c for k in range(ORDERS) for c in (orders[k], *onboardings[5 * k:5 * k + 5])]
            started_all = asyncio.gather(*mixed)
            decisions = asyncio.create_task(decide_as_they_open())
            await asyncio.wait_for(started_all, 600)
            await asyncio.wait_for(decisions, 600)
        assert killed.is_set()

        async def closed(ids: list[str]) -> dict[str, int]:
            statuses: dict[str, int] = {}
            for wf_id in ids:
                desc = await temporal.get_workflow_handle(wf_id).describe()
                statuses[desc.status.name] = statuses.get(desc.status.name, 0) + 1
            return statuses

        deadline = time.monotonic() + 600
        while True:
            status = await closed(onboard_ids + order_ids)
            if status.get("RUNNING", 0) == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)

    completed = status.get(WorkflowExecutionStatus.COMPLETED.name, 0)
    tenants = [f"{run}-t{i}" for i in range(STARTS)]
    customers = await _stripe_customers(localstripe_url)
    duplicate_customers = sum(max(0, customers.get(t, 0) - 1) for t in tenants)
    captured = [await stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": localstripe_url},
                                          http_client=stripe.HTTPXClient()).v1.payment_intents.retrieve_async(p)
                for p in intents]
    decision_audits = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'approval.approve'", shop)
    onboarded = await db.fetchval("SELECT count(*) FROM tenants WHERE id = ANY($1::text[]) AND status = 'active'",
                                  tenants)
    figures = {"starts": STARTS + ORDERS, "decisions": stats["decisions"], "kills": stats["kills"],
               "completed": completed, "status": status, "retried_calls": cluster.retried,
               "decisions_answered_by_409_already_decided": stats["already_decided"],
               "duplicates": duplicate_customers}
    out = ROOT / "build" / "many-machines.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print("many machines:", json.dumps(figures))

    assert len(set(onboard_ids)) == STARTS and len(set(order_ids)) == ORDERS
    assert completed == STARTS + ORDERS, figures
    assert onboarded == STARTS
    assert all(customers.get(t) == 1 for t in tenants), figures  # one Stripe customer each
    assert all(p.status == "succeeded" for p in captured)  # captured (a second capture is refused)
    assert stats["decisions"] == ORDERS and decision_audits == ORDERS, (figures, decision_audits)
    assert await db.fetchval("SELECT count(*) FROM orders WHERE tenant_id = $1 AND status = 'accepted'", shop) == ORDERS
    assert figures["duplicates"] == 0
