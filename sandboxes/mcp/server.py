"""The sandbox MCP server shipped with the project.

It implements the outside-effect tools the workflows use (email, WhatsApp, SMS, social posts,
ads campaigns, WordPress, CRM, inventory and shipping labels) by recording each effect in the
Postgres ``outbox`` table instead of performing it, so a fresh install shows exactly what would
have been sent. The WordPress tools are the exception: they act on the site the tenant connected
(table ``tenant_wordpress``), and record each effect too. Production points the MCP registry
(``mcp-servers.yaml`` / table ``mcp_servers``) at real MCP servers instead.

The tools come in families, one module each: :mod:`~sandboxes.mcp.messaging`,
:mod:`~sandboxes.mcp.social`, :mod:`~sandboxes.mcp.ads`, :mod:`~sandboxes.mcp.wordpress`,
:mod:`~sandboxes.mcp.crm`, :mod:`~sandboxes.mcp.web` and :mod:`~sandboxes.mcp.commerce`; this
module builds the server from them and serves it.

Every effect tool takes ``tenant_id`` and ``idempotency_key`` (and optionally ``workflow_id``)
plus its own typed arguments, and answers what the real service would (ids, status). Ids are
derived from the idempotency key, and a second call with the same key writes nothing and returns
the stored answer, so a retried activity gets the same ids. Reusing a key for a different request
(another tenant, tool or arguments) is a tool error, as with Stripe.

Run it: ``python -m sandboxes.mcp --port 8765 --database-url postgresql://...``
(``BIZ_DATABASE_URL`` when the flag is absent; ``--transport stdio`` for a stdio server).
In-process (tests): ``async with serve_http(build_server(pool), port=P) as url: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
import httpx
from mcp.server.fastmcp import FastMCP

from activities import netguard
from core.settings import FetchSettings, SmtpSettings, load_settings
from sandboxes.mcp import ads, commerce, crm, messaging, social, web, wordpress
from sandboxes.mcp.common import Outbox, PoolSource, Resolver, ToolContext

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
SERVER_NAME = "bizosaas-sandbox"

# The tool families, in the order their tools are listed.
FAMILIES = (messaging, social, ads, wordpress, crm, web, commerce)


def build_server(
    pool_or_url: asyncpg.Pool | str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    fetch_policy: netguard.FetchPolicy | None = None,
    fetch_resolver: Resolver | None = None,
    fetch_transport: httpx.AsyncBaseTransport | None = None,
    smtp: SmtpSettings | None = None,
) -> FastMCP:
    """The sandbox server (a FastMCP; streamable HTTP path ``/mcp``). Serve it with
    :func:`serve_http`, or ``await server.run_stdio_async()``. Its HTTP app runs once: build a
    new one to serve again. Given a URL rather than a pool, it opens a pool on first use; close
    that with ``await close_server(server)``. ``fetch_policy`` says where fetch_web_page may
    connect (default: public addresses on web ports only; see :mod:`activities.netguard`);
    ``fetch_resolver`` replaces the system's DNS lookup and ``fetch_transport`` the HTTP
    transport (e.g. ``httpx.MockTransport``). ``smtp``: the platform's SMTP server, over which
    send_email sends (a tenant's row in ``tenant_smtp`` overrides it); without one, and for a
    tenant without a row, mail is only recorded."""
    pools = PoolSource(pool_or_url)
    mcp = FastMCP(
        SERVER_NAME,
        instructions=(
            "BizOSaaS sandbox: outside effects (email, WhatsApp, SMS, social posts, ads, WordPress, "
            "CRM) are recorded in the outbox instead of being performed. Ids derive from the "
            "idempotency key; a repeated key returns the first answer."
        ),
        host=host,
        port=port,
        log_level="WARNING",
    )
    mcp._bizosaas_pools = pools  # type: ignore[attr-defined]  # closed by close_server
    context = ToolContext(pools=pools, outbox=Outbox(pools), fetch_policy=fetch_policy,
                          fetch_resolver=fetch_resolver, fetch_transport=fetch_transport, smtp=smtp)
    for family in FAMILIES:
        family.register(mcp, context)
    return mcp


async def close_server(server: FastMCP) -> None:
    """Close the pool a server opened from a URL (a pool passed in stays open)."""
    pools: PoolSource | None = getattr(server, "_bizosaas_pools", None)
    if pools is not None:
        await pools.aclose()


class _Uvicorn:
    """uvicorn serving a FastMCP app, with the app's lifespan (the MCP session manager) run
    around it, so that on stop the MCP sessions end first: open SSE streams of connected
    clients would otherwise hold uvicorn's graceful shutdown."""

    def __init__(self, server: FastMCP, host: str, port: int) -> None:
        import uvicorn

        self._mcp = server
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop = self._stop

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:  # SIGINT/SIGTERM
                loop.call_soon_threadsafe(stop.set)
                super().handle_exit(sig, frame)

        self.uvicorn = Server(uvicorn.Config(
            server.streamable_http_app(), host=host, port=port, lifespan="off",
            log_level="warning", timeout_graceful_shutdown=3,
        ))

    async def run(self) -> None:
        async with self._mcp.session_manager.run():
            serving = asyncio.create_task(self.uvicorn.serve())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            self.uvicorn.should_exit = True
        await serving

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def serve_http(server: FastMCP, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> AsyncIterator[str]:
    """Serve ``server`` over streamable HTTP while the block runs; yields the MCP endpoint URL.
    (A FastMCP HTTP app runs once: build a new server to serve again.)"""
    runner = _Uvicorn(server, host, port)
    task = asyncio.create_task(runner.run(), name=f"sandbox-mcp-{port}")
    while not runner.uvicorn.started:
        if task.done():
            task.result()
            raise RuntimeError("the sandbox MCP server stopped while starting")
        await asyncio.sleep(0.01)
    try:
        yield f"http://{host}:{port}{server.settings.streamable_http_path}"
    finally:
        runner.stop()
        await task


async def serve(
    database_url: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    transport: Literal["streamable-http", "stdio"] = "streamable-http",
    fetch_policy: netguard.FetchPolicy | None = None,
    smtp: SmtpSettings | None = None,
) -> None:
    """Serve the sandbox (streamable HTTP on ``host:port``, or stdio) until interrupted."""
    from core.database import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=5)
    try:
        server = build_server(pool, host=host, port=port, fetch_policy=fetch_policy, smtp=smtp)
        if transport == "stdio":
            await server.run_stdio_async()
            return
        runner = _Uvicorn(server, host, port)
        log.info("sandbox MCP server on http://%s:%d%s", host, port, server.settings.streamable_http_path)
        await runner.run()
    finally:
        await pool.close()


def fetch_policy_of(settings: FetchSettings) -> netguard.FetchPolicy:
    return netguard.FetchPolicy.from_settings(settings.allow_private_networks, settings.allowed_networks,
                                              settings.public_ports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.mcp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--database-url", default=None, help="Postgres URL (default: $BIZ_DATABASE_URL)")
    parser.add_argument("--transport", choices=("streamable-http", "stdio"), default="streamable-http")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    database_url = args.database_url or os.environ.get("BIZ_DATABASE_URL")
    if not database_url:
        parser.error("--database-url or BIZ_DATABASE_URL is required")
    # Logs go to stderr: with the stdio transport, stdout carries the protocol.
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    try:
        asyncio.run(serve(database_url, host=args.host, port=args.port, transport=args.transport,
                          fetch_policy=fetch_policy_of(settings.fetch), smtp=settings.smtp))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
