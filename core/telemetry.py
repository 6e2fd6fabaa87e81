"""OpenTelemetry wiring: one tracer provider per process, exporting to OTLP when configured."""

from __future__ import annotations

import logging

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
