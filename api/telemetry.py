"""The API's request telemetry: OpenTelemetry server spans (the ASGI instrumentation), named by
route template once the route is known, and Prometheus request metrics by route template and
status (served at /metrics, api/health.py).

While the process records no spans (no exporter: ``core.telemetry.spans_recorded``), a request
takes the id-only path of :class:`ServerSpans`: the caller's trace context is taken from its
headers and a span with ids (recording nothing) is current while it is served, so the trace
still runs through the Temporal headers and the logs. The instrumentation's recording path
reads every header and builds the semantic-convention attributes of each request: about a
third of the API's CPU for a small request, all of it for nothing that would be kept."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware, DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryInstrumentationMiddleware
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context, propagate, trace
from prometheus_client import Counter, Gauge, Histogram

from core.telemetry import spans_recorded

# Probes and scrapes every few seconds: counted by nothing, traced by nothing.
PROBE_PATHS = ("^/livez$", "^/readyz$", "^/metrics$")

# The process's request metrics (one API per process; prometheus_client's default registry).
REQUESTS = Counter("bizosaas_api_requests", "HTTP requests answered, by route template and status",
                   ["method", "route", "status_code"])
DURATION = Histogram("bizosaas_api_request_duration_seconds",
                     "Time from the request to the end of its response, by route template and status",
                     ["method", "route", "status_code"])
IN_PROGRESS = Gauge("bizosaas_api_requests_in_progress", "HTTP requests being served, by route template",
                    ["method", "route"])


def _span_details(scope: Any) -> tuple[str, dict[str, str]]:
    # Before routing only the method is known: RequestTelemetry renames the span by route template.
    method = str(scope.get("method", "")).strip() or "WEBSOCKET"
    return method, {}


def _status_of(exc: Exception) -> int:
    """The status an exception raised by a later middleware (authentication: 401, 403) is
    answered with; the handlers' own exceptions are answered inside (a response is sent)."""
    return exc.status_code if isinstance(exc, HTTPException) else HTTP_500_INTERNAL_SERVER_ERROR


class RequestTelemetry(ASGIMiddleware):
    """Runs on every routed request, before authentication (so refused requests are seen too):
    names the server span ``METHOD /route/{template}`` with ``http.route`` (ids in paths never
    become span names or metric labels), and counts and times the request by route template and
    the status it was answered with."""

    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = PROBE_PATHS

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        method, route = scope.get("method", "GET"), scope.get("path_template") or "unrouted"
        span = trace.get_current_span()
        if span.is_recording():
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        status = HTTP_500_INTERNAL_SERVER_ERROR
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = _in_progress(method, route)
        in_progress.inc()
        try:
            await next_app(scope, receive, send_status)
        except Exception as exc:
            status = _status_of(exc)  # answered by the exception handlers, outside this middleware
            raise
        finally:
            in_progress.dec()
            count, duration = _answered(method, route, status)
            count.inc()
            duration.observe(time.perf_counter() - started)


# A metric's child per label values, looked up once: the label values are few (route templates,
# the methods and statuses they answer) and prometheus_client's ``labels()`` checks and locks on
# every call.
_IN_PROGRESS: dict[tuple[str, str], Any] = {}
_ANSWERED: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _in_progress(method: str, route: str) -> Any:
    child = _IN_PROGRESS.get((method, route))
    if child is None:
        child = _IN_PROGRESS[(method, route)] = IN_PROGRESS.labels(method, route)
    return child


def _answered(method: str, route: str, status: int) -> tuple[Any, Any]:
    children = _ANSWERED.get((method, route, status))
    if children is None:
        labels = (method, route, str(status))
        children = _ANSWERED[(method, route, status)] = (REQUESTS.labels(*labels), DURATION.labels(*labels))
    return children


class ServerSpans(OpenTelemetryInstrumentationMiddleware):
    """The OpenTelemetry ASGI instrumentation while spans are recorded; otherwise the same span
    ids and trace context for much less: the propagated headers only, no attributes."""

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        super().__init__(app, config)
        self.tracer_provider = config.tracer_provider  # None: the process's, when a request comes
        # (Before the process installs its provider this is a proxy, which follows it then.)
        self.tracer = trace.get_tracer(__name__, tracer_provider=config.tracer_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if spans_recorded(self.tracer_provider):
            await self.open_telemetry_middleware(scope, receive, send)  # type: ignore[arg-type]
            return
        fields = _propagated_fields()
        carrier = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope["headers"] if name in fields}
        parent = propagate.extract(carrier)
        span = self.tracer.start_span(_span_details(scope)[0], context=parent, kind=trace.SpanKind.SERVER)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send)
        finally:
            span.end()
            context.detach(token)


_FIELDS: list[tuple[Any, frozenset[bytes]]] = []  # (the propagator, its fields)


def _propagated_fields() -> frozenset[bytes]:
    """The header names the process's propagator reads (``traceparent``, ``tracestate``,
    ``baggage`` by default; ``OTEL_PROPAGATORS`` may name others), as ASGI spells them."""
    propagator = propagate.get_global_textmap()
    if not _FIELDS or _FIELDS[0][0] is not propagator:
        _FIELDS[:] = [(propagator, frozenset(f.lower().encode("latin-1") for f in propagator.fields))]
    return _FIELDS[0][1]


def server_spans(tracer_provider: trace.TracerProvider | None = None) -> DefineMiddleware:
    """One server span per request (the process's tracer provider, core.telemetry, unless one is
    given); Temporal client calls made while serving it are its children, so one trace runs
    request -> workflow -> activity. Given among the app's middleware, Litestar runs it
    outermost, as it runs its OpenTelemetry plugin's."""
    return DefineMiddleware(ServerSpans, config=OpenTelemetryConfig(
        scope_span_details_extractor=_span_details, exclude=list(PROBE_PATHS), exclude_spans=["receive", "send"],
        scopes={ScopeType.HTTP}, tracer_provider=tracer_provider))
