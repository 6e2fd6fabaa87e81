"""Worker memory with workflows waiting: the platform's worker against a raw Temporal SDK worker.

    python bench/bench_memory.py [--quick] [--cache-sizes 250,500,1000]

One run starts a tuned Temporal dev server (the helpers of ``bench_spine.py``) and, one after
the other, two kinds of worker process, each on a task queue of its own:

- the platform's: ``core.client.connect`` and ``workers.main.build_workers`` with the settings
  as a deployment reads them, so its sticky workflow cache holds
  ``BIZ_WORKER_MAX_CACHED_WORKFLOWS`` workflows (the default unless ``--cache-sizes`` names
  others, each measured in a worker of its own);
- the raw SDK's: ``Client.connect`` and ``Worker(...)`` with the SDK's defaults (its cache holds
  1,000 workflows).

Each worker's workflow waits for a signal that never comes, as a campaign waits for its
approval: its first task marks it ``BizPendingApproval`` and it waits. The bench reads the
worker's VmRSS when it polls, then starts workflows (32 in flight) until 2,000 wait, then
10,000 (``--quick``: 500 and 2,000), reading the RSS once visibility counts them all marked
(every first task has run) and the worker has been idle a few seconds. The workflows are
terminated at the end of each worker's turn.

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
    import signal
    import sys
    import time
    import uuid
    from dataclasses import dataclass
    from pathlib import Path
    from typing import Any

    import msgspec

    for _p in (os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))):
        if _p not in sys.path:
            sys.path.append(_p)
    import bench_spine as spine

ROOT = spine.ROOT
CONCURRENCY = 32
SETTLE_SECONDS = 3.0  # idle time before each RSS reading (the last tasks done, buffers freed)


# --- the waiting workflows -------------------------------------------------------------------

class WaitInput(msgspec.Struct, frozen=True, kw_only=True):
    """The platform's way: a msgspec Struct through the msgspec converter."""

    n: int
    tenant: str = "bench-memory"


@dataclass(frozen=True)
class RawWaitInput:
    """The raw SDK's way: a dataclass through the default JSON converter."""

    n: int
    tenant: str = "bench-memory"


def _mark_waiting() -> None:
    from temporalio.common import SearchAttributeKey

    workflow.upsert_search_attributes([SearchAttributeKey.for_bool("BizPendingApproval").value_set(True)])


@workflow.defn(name="BenchMemoryWait")
class WaitWorkflow:
    def __init__(self) -> None:
        self._go = False

    @workflow.run
    async def run(self, inp: WaitInput) -> int:
        _mark_waiting()
        await workflow.wait_condition(lambda: self._go)
        return inp.n

    @workflow.signal(name="go")
    def go(self) -> None:
        self._go = True


@workflow.defn(name="BenchMemoryWaitRaw")
class RawWaitWorkflow:
    def __init__(self) -> None:
        self._go = False

    @workflow.run
    async def run(self, inp: RawWaitInput) -> int:
        _mark_waiting()
        await workflow.wait_condition(lambda: self._go)
        return inp.n

    @workflow.signal(name="go")
    def go(self) -> None:
        self._go = True


# --- the worker processes (``--worker platform|raw QUEUE``) ------------------------------------

async def serve_worker(kind: str, queue: str) -> None:
    import logging

    if kind == "platform":
        from core.client import connect
        from core.settings import Settings
        from core.telemetry import configure_tracing
        from workers.main import QueueRegistration, build_workers, serve_until

        settings = Settings(_env_file=None)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        configure_tracing(settings, "worker")
        client = await connect(settings)
        workers = build_workers(client, settings, {queue: QueueRegistration(workflows=[WaitWorkflow])})
        logging.getLogger("bench").warning("platform worker, max_cached_workflows=%d",
                                           settings.worker.max_cached_workflows)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_until(stop, workers)
        return
    # The raw SDK worker imports nothing of the platform.
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(os.environ["BIZ_TEMPORAL_ADDRESS"], namespace=os.environ["BIZ_TEMPORAL_NAMESPACE"])
    worker = Worker(client, task_queue=queue, workflows=[RawWaitWorkflow])
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.shutdown()))
    await worker.run()


# --- the run ----------------------------------------------------------------------------------

async def count_waiting(client: Any, queue: str) -> int:
    return (await client.count_workflows(
        f"TaskQueue = '{queue}' AND ExecutionStatus = 'Running' AND BizPendingApproval = true")).count


async def fill(client: Any, kind: str, queue: str, first: int, last: int) -> float:
    """Start workflows ``first`` .. ``last - 1`` on ``queue``; seconds taken."""
    t = time.perf_counter()

    async def one(i: int) -> None:
        n = first + i
        if kind == "platform":
            await client.start_workflow(WaitWorkflow.run, WaitInput(n=n), id=f"{queue}-{n}", task_queue=queue)
        else:
            await client.start_workflow(RawWaitWorkflow.run, RawWaitInput(n=n), id=f"{queue}-{n}", task_queue=queue)
        if i % 500 == 0:
            spine.checkpoint()

    await spine.run_batch(last - first, CONCURRENCY, one)
    return time.perf_counter() - t


async def until_waiting(client: Any, queue: str, count: int, timeout: float) -> float:
    """Until visibility counts ``count`` workflows of ``queue`` waiting; seconds taken."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        spine.checkpoint()
        if await count_waiting(client, queue) >= count:
            return time.perf_counter() - t
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{count} workflows of {queue} not all waiting after {timeout:.0f} s")


async def one_worker(client: Any, state: Path, addr: str, namespace: str, kind: str, cache: int | None,
                     levels: list[int]) -> dict[str, Any]:
    from bench_hitl import pollers_of

    queue = f"bench-mem-{kind}-{uuid.uuid4().hex[:8]}"
    name = f"worker-{kind}" + (f"-{cache}" if cache is not None else "")
    env = {**os.environ, "BIZ_TEMPORAL_ADDRESS": addr, "BIZ_TEMPORAL_NAMESPACE": namespace,
           "BIZ_LOG_LEVEL": "WARNING", "BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2", **spine.dev_env()}
    if cache is not None:
        env["BIZ_WORKER_MAX_CACHED_WORKFLOWS"] = str(cache)
    # The sandbox re-imports this file for every workflow run: a bytecode cache spares the
    # worker compiling it each time (see bench_spine.py).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(state / f"pycache-{name}")
    proc = spine.spawn(name, [sys.executable, os.path.abspath(__file__), "--worker", kind, queue], state,
                       cwd=ROOT, env=env)
    t = time.perf_counter()
    while not await pollers_of(client, queue):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting")
        if time.perf_counter() - t > 60:
            raise TimeoutError(f"{name} not polling after 60 s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(SETTLE_SECONDS)
    out: dict[str, Any] = {"queue": queue, "max_cached_workflows": cache, "rss_mb": {"polling": spine.rss_mb(proc.pid)}}
    spine.log(f"{name} polling {queue}: {out['rss_mb']['polling']} MB")
    started = 0
    out["fill_s"] = {}
    for level in levels:
        took = await fill(client, kind, queue, started, level)
        waited = await until_waiting(client, queue, level, timeout=600)
        started = level
        await asyncio.sleep(SETTLE_SECONDS)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        out["rss_mb"][str(level)] = spine.rss_mb(proc.pid)
        out["fill_s"][str(level)] = round(took + waited, 1)
        spine.log(f"{name}: {level} waiting ({took:.0f} s to start, {waited:.0f} s more until all waited): "
                  f"{out['rss_mb'][str(level)]} MB")
    # Stop the worker, then end its workflows (terminating needs no worker).
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 30)

    async def end(i: int) -> None:
        try:
            await client.get_workflow_handle(f"{queue}-{i}").terminate("bench done")
        except Exception:  # noqa: BLE001 - a workflow already gone
            pass

    await spine.run_batch(started, CONCURRENCY, end)
    return out


async def bench(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:
    from temporalio.client import Client

    from core.settings import Settings
    from workers.devcluster import load_dev_cluster

    levels = [500, 2000] if args.quick else [2000, 10000]
    caches: list[int | None] = [int(c) for c in args.cache_sizes.split(",")] if args.cache_sizes else [None]
    default_cache = Settings(_env_file=None, **spine.dev_fields()).worker.max_cached_workflows
    results["config"] = {"quick": args.quick, "cpus": os.cpu_count(), "levels": levels, "concurrency": CONCURRENCY,
                         "default_max_cached_workflows": default_cache,
                         "cache_sizes": [c if c is not None else default_cache for c in caches]}
    results["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    cluster = load_dev_cluster(ROOT / "temporal-dev.yaml")
    addr = await spine.start_temporal("temporal-tuned", cluster, state, tuned=True)
    for attempt in range(120):  # the frontend answers "not healthy yet" for a moment
        try:
            client = await Client.connect(addr, namespace=cluster.namespace)  # the raw SDK's converter
            break
        except RuntimeError:
            if attempt == 119:
                raise
            await asyncio.sleep(0.5)
    from core.converter import data_converter

    ours = await Client.connect(addr, namespace=cluster.namespace, data_converter=data_converter())
    results["workers"] = {}
    for cache in caches:
        key = f"platform-{cache if cache is not None else default_cache}"
        r = await one_worker(ours, state, addr, cluster.namespace, "platform", cache, levels)
        r["max_cached_workflows"] = cache if cache is not None else default_cache
        results["workers"][key] = r
    raw = await one_worker(client, state, addr, cluster.namespace, "raw", None, levels)
    raw["max_cached_workflows"] = 1000
    results["workers"]["raw"] = raw
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await spine.run_bench(bench, args)


def report(r: dict[str, Any]) -> str:
    levels = r["config"]["levels"]
    rows: list[tuple[str, str, str]] = []
    raw = r["workers"]["raw"]["rss_mb"]
    for key, w in r["workers"].items():
        label = ("raw SDK worker, SDK default cache" if key == "raw" else "platform worker") + \
            f" (max_cached_workflows={w['max_cached_workflows']})"
        rows.append((label, "", ""))
        rss = w["rss_mb"]
        rows.append(("  RSS polling", f"{rss['polling']} MB", ""))
        for level in levels:
            note = "" if key == "raw" else f"{rss[str(level)] / raw[str(level)]:.2f}x raw"
            rows.append((f"  RSS with {level:,} workflows waiting", f"{rss[str(level)]} MB",
                         f"{note}  (filled in {w['fill_s'][str(level)]} s)"))
    return spine.table("BizOSaaS worker memory vs raw Temporal SDK", "note", rows, r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 and 2,000 waiting workflows instead of 2,000 and 10,000")
    p.add_argument("--cache-sizes", default="",
                   help="comma-separated max_cached_workflows of platform workers to measure (default: the setting's)")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "QUEUE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        # The workflow sandbox imports the workflow's module by name: run it from the module
        # ``bench_memory``, not from ``__main__``.
        import bench_memory

        asyncio.run(bench_memory.serve_worker(*args.worker))
        sys.stdout.flush()
        os._exit(0)
    spine.finish(lambda: run(args), report)


if __name__ == "__main__":
    main()
