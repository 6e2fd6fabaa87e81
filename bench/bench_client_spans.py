"""The cost of the Postgres and HTTP client spans (core/telemetry.py, ``BIZ_OTEL_INSTRUMENT_CLIENTS``).

N asyncpg ``fetchval('select 1')`` on one connection and N httpx GETs on one keep-alive
connection to a minimal local HTTP server, instrumented as ``core.telemetry.instrument_clients``
does it (a span only under a current span, URL query values redacted), in rounds that alternate:

- ``plain``: not instrumented; ``plain, under a span``: each call inside a parent span (as
  inside an activity or a request), not instrumented: the baselines;
- ``no parent``: instrumented, no current span (a poller, a probe): no span is made;
- ``under a span``: instrumented, each call inside a parent span, the provider as
  ``configure_tracing`` installs it without an OTLP endpoint (spans made, then dropped);
- ``under a span, exported``: the same with a batch span processor whose exporter discards the
  batches (the cost of a process that exports, less the network).

Prints the per-call wall and CPU time of each mode (best round, and the median round) and the
microseconds per call it adds to its baseline. The machine's load average is printed: on a busy machine the
figures vary by tens of microseconds between runs.

    .venv/bin/python bench/bench_client_spans.py [--quick] [--calls 3000] [--rounds 5]
    [--dsn postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

import sys
from pathlib import Path

import asyncpg
import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.telemetry import ChildSpansOnly, _redact_query, _redact_query_async  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def serve_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def per_call(calls: int, op: Callable[[], Awaitable[object]], parent: trace.Tracer | None) -> tuple[float, float]:
    """Microseconds per call over ``calls`` calls: wall clock, and this process's CPU time (what
    the instrumentation adds is CPU time in the calling process; it is steadier than the wall
    clock on a busy machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    if parent is None:
        for _ in range(calls):
            await op()
    else:
        for _ in range(calls):
            with parent.start_as_current_span("activity"):
                await op()
    return (time.perf_counter() - started) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 calls x 2 rounds")
    parser.add_argument("--dsn", default=os.environ.get("BIZ_TEST_DATABASE_URL",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 500, 2

    provider = TracerProvider()  # as configure_tracing without an OTLP endpoint
    trace.set_tracer_provider(provider)
    exporting = BatchSpanProcessor(Discard())
    tracer = trace.get_tracer("bench")
    server = await asyncio.start_server(serve_ok, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await asyncpg.connect(args.dsn)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    pg, httpx_inst = AsyncPGInstrumentor(), HTTPXClientInstrumentor()

    async def query() -> object:
        return await conn.fetchval("select 1")

    async def get() -> object:
        return await http.get("/ok")

    # mode: (instrumented, exporting, parent span per call, baseline mode)
    modes = {"plain": (False, False, False, "plain"), "no parent": (True, False, False, "plain"),
             "plain, under a span": (False, False, True, "plain, under a span"),
             "under a span": (True, False, True, "plain, under a span"),
             "under a span, exported": (True, True, True, "plain, under a span")}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {m: {"asyncpg": [], "httpx": []} for m in modes}
    try:
        for op in (query, get):  # warm up
            await per_call(200, op, None)
        for _ in range(args.rounds):
            for mode, (instrumented, exported, spanned, _) in modes.items():
                if instrumented:
                    pg.instrument(tracer_provider=ChildSpansOnly(provider))
                    httpx_inst.instrument(tracer_provider=ChildSpansOnly(provider), request_hook=_redact_query,
                                          async_request_hook=_redact_query_async)
                if exported:
                    provider.add_span_processor(exporting)
                parent = tracer if spanned else None
                results[mode]["asyncpg"].append(await per_call(args.calls, query, parent))
                results[mode]["httpx"].append(await per_call(args.calls, get, parent))
                if instrumented:
                    pg.uninstrument()
                    httpx_inst.uninstrument()
                # Back to no processor (the provider keeps its list: a fresh tuple each time).
                provider._active_span_processor._span_processors = ()  # noqa: SLF001
    finally:
        await http.aclose()
        await conn.close()
        server.close()
        exporting.shutdown()

    print(f"{args.calls} calls x {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}; microseconds per call,"
          " best round (median round), added to the baseline")
    print(f"{'mode':<24} {'asyncpg wall':>20} {'asyncpg cpu':>20} {'httpx wall':>22} {'httpx cpu':>22}")

    def cell(mode: str, baseline: str, lib: str, i: int) -> str:
        best = min(r[i] for r in results[mode][lib])
        added = best - min(r[i] for r in results[baseline][lib])
        return f"{best:7.1f} ({statistics.median(r[i] for r in results[mode][lib]):6.1f}) {added:+6.1f}"

    for mode, (*_, baseline) in modes.items():
        print(f"{mode:<24} {cell(mode, baseline, 'asyncpg', 0):>20} {cell(mode, baseline, 'asyncpg', 1):>20}"
              f" {cell(mode, baseline, 'httpx', 0):>22} {cell(mode, baseline, 'httpx', 1):>22}")

if __name__ == "__main__":
    asyncio.run(main())
