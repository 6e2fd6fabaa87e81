"""MCP sessions: one per server for the whole worker process (official ``mcp`` client:
streamable HTTP or stdio).

Each session is owned by a background task, as the ``mcp`` transports require (their task groups
must be entered and left by one task); activity tasks send requests through it. A broken session
is dropped and the next call reconnects. The worker closes the manager on shutdown
(:meth:`MCPActivities.aclose <activities.mcp.activities.MCPActivities.aclose>`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from mcp import ClientSession, McpError, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import context as otel_context
from opentelemetry import trace

from activities.mcp.errors import (
    SESSION_GONE_CODES,
    ConnectionLost,
    connection_error,
    describe,
    leaves,
    request_error,
    unavailable,
)
from activities.mcp.registry import ServerConfig

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

T = TypeVar("T")

SSE_READ_TIMEOUT = 300.0

class Connection:
    """One MCP session, owned by a background task from connect to close."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.session: ClientSession | None = None
        self.tools: dict[str, mcp_types.Tool] | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._owner is not None and not self._owner.done() and self.session is not None

    async def open(self) -> None:
        self._owner = asyncio.create_task(self._run(), name=f"mcp-session-{self.config.name}")
        self._owner.add_done_callback(self._owner_done)
        ready = asyncio.create_task(self._ready.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, self._owner}, timeout=self.config.timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await self.aclose()
            raise
        finally:
            ready.cancel()
        if self._owner in done:
            exc = self._owner.exception() if not self._owner.cancelled() else None
            raise connection_error(self.config.name, exc or ConnectionError("session closed while connecting"))
        if not done:
            await self.aclose()
            raise unavailable(self.config.name, f"no session after {self.config.timeout_seconds:g} s")

    async def _run(self) -> None:
        # The session outlives the call that opened it: its HTTP requests are no part of that
        # call's trace (each request is a client span of its own caller, ``request``).
        otel_context.attach(otel_context.Context())
        c = self.config
        async with AsyncExitStack() as stack:
            if c.transport == "stdio":
                params = StdioServerParameters(command=c.command[0], args=list(c.command[1:]))
                read, write = await stack.enter_async_context(stdio_client(params))
            else:
                http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=httpx.Timeout(c.timeout_seconds, read=max(SSE_READ_TIMEOUT, c.timeout_seconds)))
                )
                read, write, _ = await stack.enter_async_context(streamable_http_client(c.url, http_client=http))
            session = await stack.enter_async_context(
                ClientSession(read, write, read_timeout_seconds=timedelta(seconds=c.timeout_seconds))
            )
            await session.initialize()
            self.session = session
            self._ready.set()
            log.info("MCP session to %s (%s) open", c.name, c.url or " ".join(c.command))
            await self._closing.wait()
        self.session = None

    async def request(self, what: str, op: Callable[[ClientSession], Awaitable[T]]) -> T:
        """Run one request, bounded by the server's timeout; ``ConnectionLost`` if the session
        breaks meanwhile; other failures as classified ``ApplicationError``. Each request is a
        client span (``MCP tools/call send_email``) under the activity's span."""
        with _tracer.start_as_current_span(f"MCP {what}", kind=trace.SpanKind.CLIENT,
                                           attributes={"rpc.system": "mcp", "mcp.server": self.config.name}):
            return await self._request(what, op)

    async def _request(self, what: str, op: Callable[[ClientSession], Awaitable[T]]) -> T:
        assert self._owner is not None and self.session is not None
        call = asyncio.create_task(op(self.session))
        try:
            done, _ = await asyncio.wait(
                {call, self._owner}, timeout=self.config.timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            call.cancel()
            raise
        if call in done and not call.cancelled():
            exc = call.exception()
            if exc is None:
                return call.result()
            if self._owner in done or (isinstance(exc, McpError) and exc.error.code in SESSION_GONE_CODES):
                raise ConnectionLost(self._owner_failure() or exc)
            raise request_error(self.config.name, what, exc)
        call.cancel()
        if self._owner in done:
            raise ConnectionLost(self._owner_failure())
        raise unavailable(self.config.name, f"{what} timed out after {self.config.timeout_seconds:g} s")

    def _owner_done(self, owner: asyncio.Task[None]) -> None:
        failure = None if owner.cancelled() else owner.exception()  # retrieved: no "never retrieved" noise
        if failure is not None and self._ready.is_set() and not self._closing.is_set():
            log.warning("MCP session to %s broke: %s", self.config.name, describe(leaves(failure)[0]))

    def _owner_failure(self) -> BaseException | None:
        owner = self._owner
        if owner is None or not owner.done() or owner.cancelled():
            return None
        return owner.exception()

    async def aclose(self) -> None:
        self._closing.set()
        owner = self._owner
        if owner is None or owner.done():
            return
        if not self._ready.is_set():  # still connecting: nothing to close gracefully
            owner.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(owner), timeout=5)
        except Exception:  # noqa: BLE001 - a broken session closes as it can
            owner.cancel()
            with suppress(BaseException):
                await owner


class MCPSessionManager:
    """Sessions keyed by server name, reused across activities of one worker process."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _connection(self, config: ServerConfig) -> tuple[Connection, bool]:
        """A live session for the server (and whether it was opened just now)."""
        lock = self._locks.setdefault(config.name, asyncio.Lock())
        async with lock:
            conn = self._connections.get(config.name)
            if conn is not None and conn.alive and conn.config.endpoint == config.endpoint:
                if conn.config != config:
                    conn.config = config  # timeout or category changed: same session
                return conn, False
            if conn is not None:
                self._connections.pop(config.name, None)
                await conn.aclose()
            conn = Connection(config)
            await conn.open()
            self._connections[config.name] = conn
            return conn, True

    async def _discard(self, conn: Connection) -> None:
        if self._connections.get(conn.config.name) is conn:
            del self._connections[conn.config.name]
        await conn.aclose()

    async def run(self, config: ServerConfig, what: str, op: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``op`` on the server's session. A reused session found broken (e.g. the server
        restarted) is replaced once at once; a fresh one that breaks is reported unavailable."""
        for attempt in range(2):
            conn, fresh = await self._connection(config)
            try:
                return await op(conn)
            except ConnectionLost as lost:
                await self._discard(conn)
                if fresh or attempt:
                    raise connection_error(config.name, lost.cause or lost) from None
                log.info("MCP session to %s broke (%s); reconnecting", config.name, lost)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)


async def list_server_tools(conn: Connection, *, refresh: bool = False) -> dict[str, mcp_types.Tool]:
    if conn.tools is None or refresh:
        tools: dict[str, mcp_types.Tool] = {}
        cursor: str | None = None
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await conn.request("tools/list", lambda s, p=params: s.list_tools(params=p))
            tools.update({t.name: t for t in page.tools})
            cursor = page.nextCursor
            if not cursor:
                break
        conn.tools = tools
    return conn.tools


def _decode_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_content(result: mcp_types.CallToolResult) -> Any:
    if result.structuredContent is not None:
        return result.structuredContent
    blocks = [
        _decode_text(b.text) if isinstance(b, mcp_types.TextContent) else b.model_dump(mode="json", by_alias=True)
        for b in result.content
    ]
    if not blocks:
        return None
    return blocks[0] if len(blocks) == 1 else blocks


def error_text(result: mcp_types.CallToolResult) -> str:
    texts = [b.text for b in result.content if isinstance(b, mcp_types.TextContent)]
    return (" ".join(texts) or "the tool reported an error")[:2000]


