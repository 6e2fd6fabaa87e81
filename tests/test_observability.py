"""What an operator sees: one trace from a POST to the workflow's activities, /metrics on the API
and on a worker, /livez and /readyz, JSON logs carrying the trace, the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import asyncpg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.client import connect
from core.names import INTEGRATIONS_QUEUE, WORKFLOWS_QUEUE
from core.settings import Settings
from core.telemetry import (
    DroppedSignalFilter,
    configure_logging,
    configure_tracing,
    otlp_exporter_wanted,
    service_name,
    worker_runtime,
)
from tests.conftest import Tokens, assert_eventually, dev_settings, free_port, unique
from workers.main import build_workers, registrations
from workflows.onboarding import OnboardingInput, OnboardingWorkflow


def _onboarding(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "name": f"{tenant} Ltd", "owner_email": f"owner@{tenant}.example"}


@pytest.fixture(scope="module")
def spans(settings: Settings) -> InMemorySpanExporter:
    """Every span this process ends, from here on (the process's provider, as the API installs it)."""
    configure_tracing(settings, "api")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def _completed(http: httpx.AsyncClient, wf_id: str, headers: dict[str, str]) -> None:
    async def check() -> None:
        r = await http.get(f"/v1/workflows/{wf_id}", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text

    await assert_eventually(check, timeout=30)


async def test_one_post_is_one_trace_from_the_request_to_the_activities(
    spans: InMemorySpanExporter, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    tenant = unique("traced")
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    await _completed(http, wf_id, tokens.admin())

    def of_workflow(span: ReadableSpan) -> bool:
        return (span.attributes or {}).get("temporalWorkflowID") == wf_id

    async def whole_tree() -> list[ReadableSpan]:
        ours = [s for s in spans.get_finished_spans() if of_workflow(s)]
        [start] = [s for s in ours if s.name == "StartWorkflow:Onboarding"]
        trace_id = start.context.trace_id
        tree = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
        assert {"RunWorkflow:Onboarding"} <= {s.name for s in tree}
        assert [s for s in tree if s.name.startswith("RunActivity:")]
        return tree

    tree = await assert_eventually(whole_tree, timeout=10)
    # Reading the workflow back is a trace of its own, named by its route, not by the id in the path.
    assert "GET /v1/workflows/{workflow_id}" in {s.name for s in spans.get_finished_spans()}
    by_id = {s.context.span_id: s for s in tree}

    def ancestry(span: ReadableSpan) -> list[str]:
        names = [span.name]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    # The API's server span (named by route template, never by the ids in the path) is the root.
    [root] = [s for s in tree if s.parent is None]
    assert root.name == "POST /v1/workflows/onboarding"
    assert root.attributes["http.route"] == "/v1/workflows/onboarding"
    assert root.attributes["http.status_code"] == 202
    # The workflow and each activity it ran hang under the start, under the request.
    activities = [s for s in tree if s.name.startswith("RunActivity:")]
    assert {"RunActivity:tenant.create", "RunActivity:tenant.set_status"} <= {s.name for s in activities}
    # (The SDK's workflow span is ended at once: activities are its siblings under the start.)
    [run] = [s for s in tree if s.name == "RunWorkflow:Onboarding"]
    assert ancestry(run) == ["RunWorkflow:Onboarding", "StartWorkflow:Onboarding", root.name]
    for activity in activities:
        assert ancestry(activity)[-3:] == [f"Start{activity.name[3:]}", "StartWorkflow:Onboarding", root.name]


async def test_api_metrics_count_requests_by_route_template_and_status(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    tenant = unique("metered")
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert (await http.get(f"/v1/workflows/{wf_id}")).status_code == 401  # no token

    def sample(text: str, name: str, **labels: str) -> float:
        found = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                found += float(line.rsplit(" ", 1)[1])
        return found

    page = await http.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    assert sample(text, "bizosaas_api_requests_total", method="POST", route="/v1/workflows/onboarding",
                  status_code="202") >= 1
    assert sample(text, "bizosaas_api_requests_total", method="GET", route="/v1/workflows/{workflow_id}",
                  status_code="401") >= 1
    assert sample(text, "bizosaas_api_request_duration_seconds_count", method="POST",
                  route="/v1/workflows/onboarding") >= 1
    # Labels are templates: no workflow id or tenant becomes a time series.
    assert tenant not in text


async def test_livez_answers_and_readyz_names_what_is_down(http: httpx.AsyncClient, settings: Settings) -> None:
    assert (await http.get("/livez")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["temporal"]["ok"] and ready.json()["postgres"]["ok"]
    assert (await http.get("/health")).json()["status"] == "ok"

    # An API whose Temporal is nowhere: alive, not ready.
    from api.app import create_app
    from tests.conftest import serve

    nowhere = settings.model_copy(update={"temporal": settings.temporal.model_copy(
        update={"address": f"127.0.0.1:{free_port()}"})})
    async with serve(create_app(nowhere)) as url, httpx.AsyncClient(base_url=url, timeout=10) as other:
        assert (await other.get("/livez")).status_code == 200
        down = await other.get("/readyz")
        assert down.status_code == 503, down.text
        assert down.json()["detail"] == "temporal unavailable" and down.json()["postgres"]["ok"]


async def test_worker_metrics_show_workflow_task_and_activity_metrics_per_queue(
    settings: Settings, db: asyncpg.Pool, namespace: str, mcp_sandbox: str
) -> None:
    port = free_port()
    ours = settings.model_copy(update={
        "temporal": settings.temporal.model_copy(update={"namespace": namespace}),
        "worker": settings.worker.model_copy(update={"metrics_port": port})})
    client = await connect(ours, runtime=worker_runtime(ours))
    regs = registrations(ours, db, [WORKFLOWS_QUEUE, INTEGRATIONS_QUEUE])
    workers = build_workers(client, ours, regs)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        tenant = unique("scraped")
        await client.execute_workflow(
            OnboardingWorkflow.run, OnboardingInput(tenant_id=tenant, name="Scraped Ltd", owner_email="o@scraped.example",
                                                    requested_by="admin@x"),
            id=f"{tenant}:onboarding:{tenant}", task_queue=WORKFLOWS_QUEUE)

        async def scraped() -> str:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert r.status_code == 200
            for queue in (WORKFLOWS_QUEUE,):
                assert re.search(rf'^temporal_workflow_task_execution_latency\w*{{[^}}]*task_queue="{queue}"', r.text, re.M), r.text[:3000]
            for queue in (WORKFLOWS_QUEUE, INTEGRATIONS_QUEUE):
                assert re.search(rf'^temporal_activity_execution_latency\w*{{[^}}]*task_queue="{queue}"', r.text, re.M), r.text[:3000]
            assert f'namespace="{namespace}"' in r.text
            return r.text

        await assert_eventually(scraped, timeout=15)
    finally:
        for w in workers:
            await w.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)
        for reg in regs.values():
            for close in reg.closers:
                await close()


def test_json_logs_carry_the_current_trace_and_span(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(dev_settings(log_format="json", log_level="INFO"), stream=out)
    try:
        configure_tracing(settings, "api")
        with trace.get_tracer("test").start_as_current_span("step") as span:
            logging.getLogger("bizosaas.test").info("charged %s", "tenant acme", extra={"workflow_id": "w-1"})
        logging.getLogger("bizosaas.test").warning("outside")
    finally:
        configure_logging(dev_settings())
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["message"] == "charged tenant acme" and inside["level"] == "INFO"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}" and inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["workflow_id"] == "w-1" and inside["logger"] == "bizosaas.test"
    assert "trace_id" not in outside and outside["level"] == "WARNING"


def test_a_signal_that_does_not_decode_is_one_warning_line() -> None:
    logger = logging.getLogger("temporalio.worker._workflow_instance")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    dropped = DroppedSignalFilter()
    logger.addFilter(dropped)
    try:
        try:
            raise ValueError("Expected `str`, got `int` - at `$.decision`")
        except ValueError:
            logger.exception("Failed deserializing signal input for decide on workflow CampaignWorkflow with ID x "
                             "and run ID y, dropping the signal")
    finally:
        logger.removeFilter(dropped)
        logger.removeHandler(handler)
    [line] = out.getvalue().splitlines()
    assert line.startswith("WARNING Failed deserializing signal input for decide")
    assert line.endswith("dropping the signal: ValueError: Expected `str`, got `int` - at `$.decision`")


def test_standard_otel_variables_are_honoured() -> None:
    s = dev_settings()
    assert service_name(s, {}) == "bizosaas"
    assert service_name(s, {"OTEL_SERVICE_NAME": "biz-eu"}) == "biz-eu"
    assert service_name(dev_settings(otel={"service_name": "mine"}), {"OTEL_SERVICE_NAME": "biz-eu"}) == "mine"
    assert not otlp_exporter_wanted(s, {})
    assert otlp_exporter_wanted(s, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otlp_exporter_wanted(s, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert otlp_exporter_wanted(dev_settings(otel={"otlp_endpoint": "http://c:4318/v1/traces"}), {})
    assert not otlp_exporter_wanted(s, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
