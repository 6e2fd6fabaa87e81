"""The one Temporal client factory, for the API, the workers and the CLI."""

from __future__ import annotations

import dataclasses
import logging

from temporalio.client import Client, TLSConfig
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from opentelemetry import trace

from core.codec import payload_codec
from core.converter import data_converter
from core.settings import Settings
from core.telemetry import ExpectedErrorsTracer

log = logging.getLogger(__name__)


def platform_data_converter(settings: Settings) -> DataConverter:
    """The msgspec converter with the AES-GCM payload codec of ``BIZ_CODEC_KEYS`` (refused in
    production without keys): what every client and worker of the platform uses. Failure
    messages and stack traces travel as an encoded payload too (a tool's or Stripe's error text
    may quote an email address); clients and workers decode them as before."""
    codec = payload_codec(settings)
    if codec is None:
        log.warning("BIZ_CODEC_KEYS is not set: Temporal payloads are stored in clear (dev only)")
        return data_converter()
    return dataclasses.replace(
        data_converter(), payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
    )


def _tls(settings: Settings) -> TLSConfig | bool:
    t = settings.temporal
    if not (t.tls or t.tls_client_cert or t.tls_server_root_ca):
        # An API key (Temporal Cloud) always travels over TLS.
        return t.api_key is not None
    return TLSConfig(
        server_root_ca_cert=t.tls_server_root_ca.read_bytes() if t.tls_server_root_ca else None,
        client_cert=t.tls_client_cert.read_bytes() if t.tls_client_cert else None,
        client_private_key=t.tls_client_key.read_bytes() if t.tls_client_key else None,
        domain=t.tls_server_name,
    )


async def connect(settings: Settings, *, lazy: bool = False, runtime: Runtime | None = None) -> Client:
    """Connect with the msgspec converter and payload codec, tracing and TLS/API key from settings.

    ``runtime``: a Temporal runtime of the process's own (a worker's, serving its metrics,
    core.telemetry.worker_runtime); None: the SDK's default.

    ``lazy=True`` returns at once and connects on first use, so a process can start (and
    report itself unhealthy) while the Temporal server is unreachable.
    """
    t = settings.temporal
    return await Client.connect(
        t.address,
        namespace=t.namespace,
        data_converter=platform_data_converter(settings),
        # A start of a workflow that exists is expected (a redelivered webhook, a retried
        # request): recorded on its span without formatting its traceback.
        interceptors=[TracingInterceptor(ExpectedErrorsTracer(
            trace.get_tracer("temporalio.contrib.opentelemetry._interceptor"), (WorkflowAlreadyStartedError,)))],
        tls=_tls(settings),
        api_key=t.api_key.get_secret_value() if t.api_key else None,
        lazy=lazy,
        runtime=runtime,
    )
