"""``create_app(settings)``: the Litestar app. Its lifespan owns the Temporal client and the
asyncpg pool; handlers receive them through dependency injection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope
from temporalio.client import Client

from core.database import create_pool
from api.analytics import analytics_router
from api.audit import audit_router
from api.auth import BearerAuthMiddleware, TokenVerifier
from api.bodies import MAX_BODY_BYTES, ApiRequest, StrictStructSchemaPlugin
from api.codec import codec_cors, codec_router
from api.console import console_router, template_config
from api.affiliates import AffiliatesController
from api.connections import ConnectionsController
from api.control import AdminWorkflowController
from api.errors import EXCEPTION_HANDLERS, document_errors
from api.health import health, livez, metrics, readyz
from api.inbox import prune_forever
from api.mcp import mcp_router
from api.outbound import outbound_router
from api.outbox import outbox_router
from api.devmail import dev_mail_router
from api.links import links_router
from api.pending_actions import PendingStream, pending_actions_router
from api.ratelimit import StartLimiter
from api.reports import reports_router
from api.schedules import schedules_router
from api.telemetry import RequestTelemetry, server_spans
from api.tenant_settings import settings_router
from api.tenants import KnownTenants
from api.triggers import seed_triggers
from api.usage import usage_router
from api.visibility import cursor_key
from api.webhooks import webhooks_router
from api.workflows import workflows_router
from core.client import connect
from core.codec import payload_codec
from core.settings import Settings
from core.telemetry import configure_tracing

log = logging.getLogger(__name__)

# Webhooks are public: the sender's signature is their authentication (api/webhooks.py).
# Probes and the Prometheus scrape are public too (no tenant data: counts by route template).
# The console (api/console/) signs people in itself and keeps them in a session cookie.
# One-click links are public too: their signed token is the credential (api/links.py).
PUBLIC_PATHS = ["^/health$", "^/livez$", "^/readyz$", "^/metrics$", "^/schema", "^/v1/webhooks/", "^/console(/|$)",
                "^/v1/links/"]


def allow_every_method(allowed: dict[str, str]):  # noqa: ANN201 - a Litestar before_send hook
    """OPTIONS answers ``Allow`` with every method of its path (``allowed``: path template ->
    methods, filled once the app's routes exist). Litestar's own answer lists only the methods of
    the handlers first registered at a path, so a path whose handlers come from two places (a
    capability's settings GET and PUT, a controller's list and create) would leave some out."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        handler = scope.get("route_handler")
        for path in getattr(handler, "paths", ()):
            if path in allowed:
                MutableScopeHeaders.from_message(message)["Allow"] = allowed[path]
                return

    return before_send


def create_app(settings: Settings) -> Litestar:
    # Refuse unsafe or missing settings before serving anything (ConfigError names the variable).
    token_verifier = TokenVerifier(settings)
    codec = payload_codec(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        configure_tracing(settings, "api")
        # Lazy: the API starts (and /health says so) while Temporal is unreachable.
        app.state.temporal = await connect(settings, lazy=True)
        app.state.cursor_key = cursor_key(settings)
        app.state.db = await create_pool(
            settings.database_url(), min_size=settings.database.pool_min, max_size=settings.database.pool_max,
            command_timeout=settings.database.command_timeout_seconds, migrate=settings.database.migrate_on_start,
            reset_session=False,  # the API leaves no session state: no reset query per statement
        )
        # The trigger table's declared rows (new ones only; configuration, not business rows).
        await seed_triggers(app.state.db)
        # The webhook inbox's retention: old deliveries deleted now and hourly (api/inbox.py).
        pruning = asyncio.create_task(
            prune_forever(app.state.db, timedelta(days=settings.webhooks.inbox_retention_days)))
        # One poller behind every Pending Actions stream of this process.
        app.state.known_tenants = KnownTenants(app.state.db)
        app.state.pending_stream = PendingStream(lambda: app.state.temporal, lambda: app.state.db)
        try:
            yield
        finally:
            await app.state.pending_stream.aclose()
            pruning.cancel()
            await app.state.db.close()

    def provide_temporal(state: State) -> Client:
        return state.temporal

    def provide_db(state: State) -> asyncpg.Pool:
        return state.db

    def provide_cursor_key(state: State) -> bytes:
        return state.cursor_key

    allowed: dict[str, str] = {}  # each path's methods, once the routes exist (allow_every_method)
    app = Litestar(
        route_handlers=[health, livez, readyz, metrics, workflows_router(StartLimiter(settings.api.start_rate_per_minute, settings.api.start_burst)),
                        pending_actions_router(), outbox_router(), mcp_router(), schedules_router(),
                        webhooks_router(), codec_router(), settings_router(), outbound_router(),
                        reports_router(), audit_router(), usage_router(), analytics_router(),
                        AdminWorkflowController, AffiliatesController, ConnectionsController, console_router(), links_router(),
                        *([dev_mail_router()] if settings.environment == "dev" else [])],
        lifespan=[lifespan],
        dependencies={"temporal": Provide(provide_temporal, sync_to_thread=False),
                      "db": Provide(provide_db, sync_to_thread=False),
                      "cursor_key": Provide(provide_cursor_key, sync_to_thread=False)},
        # The server span outermost (Litestar puts it there); then, after routing, request metrics
        # and the span's route name, before auth. Auth also checks each route's roles
        # (opt={"roles": ...}).
        middleware=[server_spans(), RequestTelemetry(), DefineMiddleware(BearerAuthMiddleware, exclude=PUBLIC_PATHS)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=ApiRequest,
        plugins=[StrictStructSchemaPlugin()],
        template_config=template_config(),
        request_max_body_size=MAX_BODY_BYTES,
        before_send=[codec_cors(settings.codec.cors_origins), allow_every_method(allowed)],
        openapi_config=OpenAPIConfig(
            title="BizOSaaS Workflows API",
            version="1.0.0",
            description="Start, inspect and decide on BizOSaaS workflows.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(path="/"), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
            security=[{"bearer": []}],
        ),
        logging_config=LoggingConfig(log_exceptions="never", configure_root_logger=False),
        debug=False,
    )
    document_errors(app, PUBLIC_PATHS)
    allowed.update({route.path: ", ".join(sorted(route.methods)) for route in app.routes if isinstance(route, HTTPRoute)})
    app.state.token_verifier = token_verifier
    app.state.codec = codec
    app.state.settings = settings
    return app
