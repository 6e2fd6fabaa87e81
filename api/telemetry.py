"""The API's request telemetry: OpenTelemetry server spans (Litestar's instrumentation), named by
route template once the route is known, and Prometheus request metrics by route template and
status (served at /metrics, api/health.py)."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

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


def tracing_plugin() -> OpenTelemetryPlugin:
    """One server span per request (the global tracer provider, core.telemetry); Temporal client
    calls made while serving it are its children, so one trace runs request -> workflow -> activity."""
    return OpenTelemetryPlugin(OpenTelemetryConfig(
        scope_span_details_extractor=_span_details, exclude=list(PROBE_PATHS), exclude_spans=["receive", "send"],
        scopes={ScopeType.HTTP}))
