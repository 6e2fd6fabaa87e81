"""OpenTelemetry wiring: one tracer provider per process, exporting to OTLP when configured."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from core.settings import Settings

log = logging.getLogger(__name__)
_configured = False


def configure_tracing(settings: Settings, component: str) -> None:
    """Install the process's tracer provider (once). Without an OTLP endpoint spans are
    still created (trace ids propagate through Temporal headers) but not exported."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.otel.service_name, "service.namespace": "bizosaas",
             "bizosaas.component": component}
        )
    )
    if settings.otel.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel.otlp_endpoint))
        )
        log.info("exporting traces to %s", settings.otel.otlp_endpoint)
    trace.set_tracer_provider(provider)


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
