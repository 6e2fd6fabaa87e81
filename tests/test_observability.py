"""What an operator sees: one trace from a POST to the workflow's activities, /metrics on the API
and on a worker, /livez and /readyz, JSON logs carrying the trace, the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.client import connect
from core.names import INTEGRATIONS_QUEUE, WORKFLOWS_QUEUE
from core.settings import Settings
from core.telemetry import (
    SANITIZE_FIELDS_VARIABLE,
    DroppedSignalFilter,
    PlatformTracerProvider,
    UndecodablePayloadFilter,
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
    """Every span this process ends, from here on (the process's provider, as the API installs it),
    with the Postgres and HTTP client spans (``BIZ_OTEL_INSTRUMENT_CLIENTS``) recording every
    request and response header an operator can ask for: the credentials must not show."""
    traced = settings.model_copy(update={"otel": settings.otel.model_copy(update={"instrument_clients": True})})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
        env.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
        env.delenv(SANITIZE_FIELDS_VARIABLE, raising=False)
        configure_tracing(traced, "api")
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
    spans: InMemorySpanExporter, http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("traced")
    with suppress_http_instrumentation():  # the test's own request is no client span: the API's is the root
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

    # Under the activities, their Postgres statements and the requests to Stripe and Lago.
    def activity_of(span: ReadableSpan) -> str | None:
        return next((name for name in ancestry(span)[1:] if name.startswith("RunActivity:")), None)

    clients = [s for s in tree if s.kind == trace.SpanKind.CLIENT]
    postgres = [s for s in clients if _attribute(s, "db.system", "db.system.name") == "postgresql"]
    assert any(activity_of(s) == "RunActivity:tenant.create" and "tenants" in _attribute(s, "db.statement", "db.query.text")
               for s in postgres), [(s.name, activity_of(s)) for s in postgres]
    outbound = {activity_of(s): s for s in clients if _attribute(s, "http.url", "url.full")}
    stripe, lago = outbound["RunActivity:stripe.create_customer"], outbound["RunActivity:lago.create_customer"]
    assert _attribute(stripe, "http.method", "http.request.method") == "POST"
    assert _attribute(stripe, "http.url", "url.full").endswith("/v1/customers")
    assert _attribute(stripe, "http.status_code", "http.response.status_code") == 200
    assert "/api/v1/customers" in _attribute(lago, "http.url", "url.full")
    # Every header is recorded (the fixture asks for them), credentials as [REDACTED] only.
    for call in (stripe, lago):
        assert call.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    secrets = [s.get_secret_value() for s in (settings.stripe.api_key, settings.lago.api_key,
                                               settings.stripe.webhook_secret, settings.lago.webhook_secret)]
    secrets.append(tokens.admin()["authorization"].split()[1])
    for span in spans.get_finished_spans():
        recorded = repr(dict(span.attributes or {})) + repr([dict(e.attributes or {}) for e in span.events])
        assert not [secret for secret in secrets if secret in recorded], span.name


def _attribute(span: ReadableSpan, *names: str) -> Any:
    """The span's attribute under its old or its stable semantic-convention name."""
    attributes = span.attributes or {}
    return next((attributes[n] for n in names if n in attributes), None)


async def test_an_mcp_tool_call_is_a_client_span_under_the_activity(
    spans: InMemorySpanExporter, db: asyncpg.Pool, mcp_sandbox: str
) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.mcp import MCPActivities
    from activities.mcp.activities import CallToolRequest

    tenant = unique("toolspan")
    mcp = MCPActivities(db)
    try:
        with trace.get_tracer("test").start_as_current_span("RunActivity:mcp.call_tool") as activity_span:
            await ActivityEnvironment().run(mcp.call_tool, CallToolRequest(
                tenant_id=tenant, server="sandbox", tool="send_email", idempotency_key=f"{tenant}:welcome",
                arguments={"to": ["o@toolspan.example"], "subject": "Welcome", "text": "Hello"}))
    finally:
        await mcp.aclose()
    ours = [s for s in spans.get_finished_spans() if s.context.trace_id == activity_span.get_span_context().trace_id]
    [call] = [s for s in ours if s.name == "MCP tools/call send_email"]
    assert call.parent.span_id == activity_span.get_span_context().span_id
    assert call.kind == trace.SpanKind.CLIENT and call.attributes["mcp.server"] == "sandbox"
    # The session (opened by this call, kept for the next ones) sends its HTTP requests from its
    # own task: none of them is put in this trace.
    assert not [s for s in ours if _attribute(s, "http.url", "url.full")]


async def test_client_spans_record_no_url_credentials_and_no_calls_outside_a_span(
    spans: InMemorySpanExporter, http: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    await db.fetchval("SELECT 'outside any span'")
    url = http.base_url.copy_with(userinfo=b"ops:hunter2", path="/livez", query=b"token=tok-hunter3&page=2")
    with trace.get_tracer("test").start_as_current_span("step") as step:
        await db.fetchval("SELECT 'inside a span'")
        assert (await http.get(url)).status_code == 200
    ours = [s for s in spans.get_finished_spans() if s.context.trace_id == step.get_span_context().trace_id]
    [get] = [s for s in ours if _attribute(s, "http.url", "url.full")]
    assert _attribute(get, "http.url", "url.full") == (
        f"http://REDACTED:REDACTED@{url.host}:{url.port}/livez?token=REDACTED&page=REDACTED")
    assert get.parent.span_id == step.get_span_context().span_id
    statements = [_attribute(s, "db.statement", "db.query.text") for s in spans.get_finished_spans()]
    assert "SELECT 'inside a span'" in statements and "SELECT 'outside any span'" not in statements
    assert "hunter" not in repr([dict(s.attributes or {}) for s in ours])


def test_client_spans_follow_the_export_unless_told() -> None:
    from core.telemetry import client_spans_wanted, sanitized_header_fields

    exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not client_spans_wanted(dev_settings(), {}) and client_spans_wanted(dev_settings(), exporting)
    assert client_spans_wanted(dev_settings(otel={"instrument_clients": True}), {})
    assert not client_spans_wanted(dev_settings(otel={"instrument_clients": False}), exporting)
    # An operator's own sanitized headers are kept, credentials' added.
    fields = sanitized_header_fields({SANITIZE_FIELDS_VARIABLE: "x-tenant-pin, auth"}).split(",")
    assert fields[:2] == ["x-tenant-pin", "auth"] and "cookie" in fields and fields.count("auth") == 1


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
    assert page.headers["content-type"].count("charset") == 1, page.headers["content-type"]
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
    root = logging.getLogger()
    kept = root.handlers[:], root.level  # the test run's own capture
    configure_logging(dev_settings(log_format="json", log_level="INFO"), stream=out)
    try:
        configure_tracing(settings, "api")
        with trace.get_tracer("test").start_as_current_span("step") as span:
            logging.getLogger("bizosaas.test").info("charged %s", "tenant acme", extra={"workflow_id": "w-1"})
        logging.getLogger("bizosaas.test").warning("outside")
    finally:
        root.handlers[:], level = kept
        root.setLevel(level)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["message"] == "charged tenant acme" and inside["level"] == "INFO"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}" and inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["workflow_id"] == "w-1" and inside["logger"] == "bizosaas.test"
    assert "trace_id" not in outside and outside["level"] == "WARNING"


async def test_a_signal_that_does_not_convert_is_one_warning_line_and_the_workflow_goes_on(
    http: httpx.AsyncClient, settings: Settings, client: Client
) -> None:
    from tests.test_dunning import deliver, new_invoice_id, stripe_event
    from workflows.dunning import PAID_SIGNAL, DunningResult, invoice_key

    tenant, inv = unique("dropped"), new_invoice_id()
    wf_id = f"{tenant}:dunning:{invoice_key(inv)}"
    assert (await deliver(http, settings, stripe_event("invoice.payment_failed", tenant, inv))).status_code == 202

    logger = logging.getLogger("temporalio.worker._workflow_instance")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    dropped = DroppedSignalFilter()
    logger.addFilter(dropped)
    logger.addHandler(handler)
    try:
        # `invoice_paid` takes the Stripe event object: a bare string does not convert.
        await client.get_workflow_handle(wf_id).signal(PAID_SIGNAL, "paid, honestly")

        async def warned() -> None:
            assert "dropping the signal" in out.getvalue()

        await assert_eventually(warned, timeout=20)
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(dropped)
    [line] = out.getvalue().splitlines()
    assert line.startswith("WARNING Failed deserializing signal input for invoice_paid") and wf_id in line
    assert "dropping the signal: " in line and "Traceback" not in out.getvalue()
    # The workflow went on: the real event still ends it.
    assert (await deliver(http, settings, stripe_event("invoice.paid", tenant, inv, status="paid"))).status_code == 202
    result = await client.get_workflow_handle(wf_id, result_type=DunningResult).result()
    assert result.status == "paid"


async def test_a_signal_the_codec_cannot_decode_logs_one_warning_line_per_attempt(
    http: httpx.AsyncClient, tokens: Tokens, client: Client
) -> None:
    from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
    from temporalio.api.workflowservice.v1 import SignalWorkflowExecutionRequest

    tenant = unique("poisoned")
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    wf_id = r.json()["workflow_id"]
    await _completed(http, wf_id, tokens.admin())
    r = await http.post("/v1/workflows/campaign", headers=tokens.client(tenant), json={
        "tenant_id": tenant, "campaign_key": "spring", "goal": "Sell more sourdough this spring",
        "channels": ["google_ads"], "budget_usd": 600, "objective": "sales"})
    assert r.status_code == 202, r.text
    campaign = r.json()["workflow_id"]

    logger = logging.getLogger("temporalio.worker._workflow")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    undecodable = UndecodablePayloadFilter()
    logger.addFilter(undecodable)
    logger.addHandler(handler)
    try:
        # Someone with Temporal access signals a payload under no key of BIZ_CODEC_KEYS.
        await client.workflow_service.signal_workflow_execution(SignalWorkflowExecutionRequest(
            namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=campaign),
            signal_name="decide", identity="test",
            input=Payloads(payloads=[Payload(metadata={"encoding": b"binary/encrypted"}, data=b"not a ciphertext")])))

        async def warned() -> None:
            assert "a payload did not decode" in out.getvalue()

        await assert_eventually(warned, timeout=20)
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(undecodable)
        await client.get_workflow_handle(campaign).terminate("test over")
    lines = [line for line in out.getvalue().splitlines() if campaign in line or "did not decode" in line]
    assert lines and all(line.startswith("WARNING temporalio.worker._workflow: Failed handling activation") for line in lines)
    assert "CodecError" in lines[0] and "Traceback" not in out.getvalue()


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


def test_spans_are_recorded_once_something_receives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no exporter a process records no span (nothing would read it), but each span still
    has its ids, which logs and Temporal headers carry; once a processor is added (the OTLP
    exporter, here an in-memory one) spans are recorded, as OTEL_TRACES_SAMPLER says."""
    provider = PlatformTracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("nobody listens") as span:
        assert not span.is_recording() and span.get_span_context().trace_id != 0
        with tracer.start_as_current_span("its child") as child:
            assert child.get_span_context().trace_id == span.get_span_context().trace_id
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracer.start_as_current_span("exported") as span:
        assert span.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["exported"]

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    sampled_off = PlatformTracerProvider()
    sampled_off.add_span_processor(SimpleSpanProcessor(exporter))
    with sampled_off.get_tracer("test").start_as_current_span("sampled out") as span:
        assert not span.is_recording()



async def test_server_spans_carry_the_callers_trace_whether_or_not_spans_are_recorded() -> None:
    """Without an exporter the API takes the id-only path (no attributes collected): the
    caller's ``traceparent`` is still the trace of what the request does, and a request without
    one gets a trace of its own. Once spans are recorded, the full server span is exported, in
    the caller's trace."""
    from litestar import Litestar, get
    from litestar.params import PathParameter
    from litestar.testing import AsyncTestClient

    from api.telemetry import RequestTelemetry, server_spans

    @get("/where/{thing:str}")
    async def where(thing: Annotated[str, PathParameter()]) -> dict[str, Any]:
        span = trace.get_current_span()
        return {"trace_id": format(span.get_span_context().trace_id, "032x"), "recording": span.is_recording()}

    provider = PlatformTracerProvider()
    app = Litestar([where], middleware=[server_spans(provider), RequestTelemetry()])
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = {"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"}
    async with AsyncTestClient(app) as client:
        r = await client.get("/where/a", headers=traceparent)
        assert r.json() == {"trace_id": caller_trace, "recording": False}
        own = [(await client.get("/where/b")).json()["trace_id"] for _ in range(2)]
        assert caller_trace not in own and own[0] != own[1] and "0" * 32 not in own

        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        r = await client.get("/where/c", headers=traceparent)
        assert r.json() == {"trace_id": caller_trace, "recording": True}
    [server] = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert server.name == "GET /where/{thing}" and format(server.context.trace_id, "032x") == caller_trace
    assert _attribute(server, "http.status_code", "http.response.status_code") == 200

# --- Settings ------------------------------------------------------------------------------

def _from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key in [k for k in __import__("os").environ if k.startswith("BIZ_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_log_format_and_worker_metrics_port_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _from_env(monkeypatch)
    assert s.log_format == "text" and s.worker.metrics_bind() is None
    assert s.otel.instrument_clients is None
    assert _from_env(monkeypatch, BIZ_OTEL_INSTRUMENT_CLIENTS="false").otel.instrument_clients is False
    s = _from_env(monkeypatch, BIZ_LOG_FORMAT="json", BIZ_WORKER_METRICS_PORT="9464", BIZ_WORKER_METRICS_HOST="0.0.0.0")
    assert s.log_format == "json" and s.worker.metrics_bind() == "0.0.0.0:9464"
    for off in ("", "0"):
        assert _from_env(monkeypatch, BIZ_WORKER_METRICS_PORT=off).worker.metrics_bind() is None
    with pytest.raises(ValueError, match="log_format"):
        _from_env(monkeypatch, BIZ_LOG_FORMAT="xml")
    with pytest.raises(ValueError, match="metrics_port"):
        _from_env(monkeypatch, BIZ_WORKER_METRICS_PORT="70000")


def test_every_dev_port_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _from_env(monkeypatch, BIZ_DEV_TEMPORAL_PORT="17000", BIZ_DEV_UI_PORT="17001", BIZ_DEV_TEMPORAL_HTTP_PORT="17002",
                  BIZ_DEV_TEMPORAL_METRICS_PORT="17003", BIZ_DEV_MCP_PORT="17004", BIZ_DEV_LAGO_PORT="17005",
                  BIZ_DEV_STRIPE_PORT="17006", BIZ_API_PORT="17007")
    d = s.dev
    assert (d.temporal_port, d.ui_port, d.temporal_http_port, d.temporal_metrics_port, d.mcp_port, d.lago_port,
            d.stripe_port, s.api.port) == tuple(range(17000, 17008))


def test_a_moved_dev_server_gets_its_own_http_and_metrics_ports(dev_cluster) -> None:  # noqa: ANN001
    declared = dev_cluster.frontend_port
    assert dev_cluster.side_ports(declared) == (dev_cluster.http_port, dev_cluster.metrics_port)
    # Moved: neither the declared ones nor frontend+10 / +1 (which another stack's moved frontend
    # port may be), free ones instead.
    moved = declared + 100
    http, metrics = dev_cluster.side_ports(moved)
    assert len({http, metrics, dev_cluster.http_port, dev_cluster.metrics_port, moved, moved + 10, moved + 1}) == 7
    assert dev_cluster.side_ports(9000, http_port=9010, metrics_port=9011) == (9010, 9011)
    args = dev_cluster.server_args(__import__("pathlib").Path("/tmp/x"), frontend_port=9000, http_port=9010,
                                   metrics_port=9011)
    assert args[args.index("--http-port") + 1] == "9010" and args[args.index("--metrics-port") + 1] == "9011"


def test_dev_makes_webhook_secrets_for_the_sources_the_environment_leaves_unset(tmp_path) -> None:  # noqa: ANN001
    from workers.dev import dev_credentials, dev_env

    base = dev_settings(dev={"state_dir": tmp_path}, shopify={"webhook_secret": "mine-shopify"})
    assert dev_credentials(base, create=False).stripe.webhook_secret is None  # read only: nothing made
    made = dev_credentials(base, create=True)
    assert made.shopify.webhook_secret.get_secret_value() == "mine-shopify"  # the environment's is kept
    assert made.stripe.webhook_secret.get_secret_value().startswith("whsec_")
    assert made.lago.webhook_secret is not None
    assert (tmp_path / "dev-webhook-secrets").stat().st_mode & 0o777 == 0o600
    # The same ones on the next run, and for a process started beside the stack.
    again = dev_credentials(base, create=False)
    assert again.stripe.webhook_secret == made.stripe.webhook_secret
    env = dev_env(made)
    assert env["BIZ_SHOPIFY_WEBHOOK_SECRET"] == "mine-shopify"
    assert env["BIZ_LAGO_WEBHOOK_SECRET"] == made.lago.webhook_secret.get_secret_value()
