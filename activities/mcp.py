"""MCP tools as Temporal activities: the registry, the session manager and the activities.

- The registry lives in Postgres (``mcp_servers``, ``mcp_server_tenants``), seeded from
  ``mcp-servers.yaml`` by :func:`seed_registry`, and read on every call: disabling a server
  (globally or for one tenant) takes effect at once.
- :class:`MCPSessionManager` keeps one MCP session per server for the whole worker process
  (official ``mcp`` client: streamable HTTP or stdio). Each session is owned by a background
  task, as the ``mcp`` transports require (their task groups must be entered and left by one
  task); activity tasks send requests through it. A broken session is dropped and the next call
  reconnects. The worker calls :meth:`MCPActivities.aclose` on shutdown.
- :class:`MCPActivities` registers ``mcp.list_tools`` and ``mcp.call_tool``. Errors are split
  for Temporal: the tool reported an error or the request is invalid → non-retryable
  ``MCPToolError``; the server cannot be reached, times out or answers 5xx → retryable
  ``MCPUnavailable`` (Temporal retries with backoff); a server that is unknown or disabled
  → non-retryable ``MCPServerNotFound`` / ``MCPServerDisabled``; a 401/403-like answer (a
  misconfigured server, not an outage) → non-retryable ``MCPServerRejected``.

Arguments the caller does not have to repeat: when a tool's input schema declares
``tenant_id``, ``idempotency_key`` or ``workflow_id``, the activity fills them from the request
(and the activity's workflow); arguments naming another tenant or key are refused. Tools that do
not declare them receive exactly the caller's arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import asyncpg
import httpx
import msgspec
import yaml
from mcp import ClientSession, McpError, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from core.activity import Activities, ActivityPolicy
from core.names import INTEGRATIONS_QUEUE, SLUG_PATTERN

log = logging.getLogger(__name__)

T = TypeVar("T")

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "mcp-servers.yaml"

# Activity options for workflows calling MCP tools (STYLE: named per kind of dependency).
# The per-server timeout (registry) bounds each call; MCP_TOOL_TIMEOUT bounds an attempt as a
# whole; a server down for longer than the attempts or MCP_TOOL_DEADLINE (all attempts and
# back-offs together) fails the call with its last error (MCPUnavailable) instead of retrying
# forever. All three make the class's policy (MCP_TOOL).
MCP_TOOL_TIMEOUT = timedelta(seconds=120)
MCP_TOOL_DEADLINE = timedelta(minutes=15)
MCP_TOOL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=12,  # about 7.5 minutes of back-off
)
MCP_TOOL = ActivityPolicy(start_to_close=MCP_TOOL_TIMEOUT, schedule_to_close=MCP_TOOL_DEADLINE, retry=MCP_TOOL_RETRY)

# Error types (callers match on these, never on message text).
SERVER_NOT_FOUND = "MCPServerNotFound"
SERVER_DISABLED = "MCPServerDisabled"
TOOL_ERROR = "MCPToolError"
UNAVAILABLE = "MCPUnavailable"
REJECTED = "MCPServerRejected"  # 401/403/...: configuration, not a passing outage

_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_TENANT = re.compile(SLUG_PATTERN)
# JSON-RPC errors that mean the request itself is wrong: retrying cannot help.
_PERMANENT_RPC_CODES = frozenset({
    mcp_types.PARSE_ERROR, mcp_types.INVALID_REQUEST, mcp_types.METHOD_NOT_FOUND, mcp_types.INVALID_PARAMS,
})
# The session is gone (connection closed; 32600: the server no longer knows the session id,
# e.g. it restarted): reconnect.
_SESSION_GONE_CODES = frozenset({mcp_types.CONNECTION_CLOSED, 32600})
_RETRYABLE_HTTP_4XX = frozenset({404, 408, 409, 425, 429})
SSE_READ_TIMEOUT = 300.0


# --- payloads --------------------------------------------------------------------------------
# No msgspec.Meta constraints on activity inputs: a payload that fails to decode fails the
# activity with a *retryable* error. The activity checks them and fails non-retryably instead.

class ListToolsRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    server: str


class ToolInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    output_schema: dict[str, Any] | None = None


class ListToolsResult(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    tools: list[ToolInfo]


class CallToolRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    server: str
    tool: str
    idempotency_key: str  # workflow id + step, never a uuid4
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class CallToolResult(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    tool: str
    # The tool's structured result (structuredContent), else its text content JSON-decoded
    # where it is JSON; several content blocks come as a list.
    content: Any
    # Always False here: a tool error raises MCPToolError. Kept for callers that log results.
    is_error: bool = False


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One registry entry (a row of ``mcp_servers``, or an entry of mcp-servers.yaml)."""

    name: Annotated[str, msgspec.Meta(pattern=_SERVER_NAME.pattern)]
    transport: Literal["streamable-http", "stdio"]
    url: str | None = None
    command: tuple[str, ...] = ()
    category: str = "general"
    enabled: bool = True
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        if self.transport == "streamable-http" and not self.url:
            raise ValueError(f"MCP server {self.name!r}: streamable-http needs a url")
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"MCP server {self.name!r}: stdio needs a command")

    @property
    def endpoint(self) -> tuple[str, str | None, tuple[str, ...]]:
        """What a session is bound to: a change here means reconnect."""
        return (self.transport, self.url, self.command)


class _RegistryFile(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[ServerConfig] = msgspec.field(default_factory=list)


# --- the registry ----------------------------------------------------------------------------

async def register_server(conn: asyncpg.Connection | asyncpg.Pool, server: ServerConfig) -> str:
    """Upsert one entry; returns ``inserted``, ``updated`` or ``unchanged``."""
    row = await conn.fetchrow(
        """INSERT INTO mcp_servers AS s (name, transport, url, command, category, enabled, timeout_seconds)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (name) DO UPDATE SET
               transport = EXCLUDED.transport, url = EXCLUDED.url, command = EXCLUDED.command,
               category = EXCLUDED.category, enabled = EXCLUDED.enabled,
               timeout_seconds = EXCLUDED.timeout_seconds, updated_at = now()
           WHERE (s.transport, s.url, s.command, s.category, s.enabled, s.timeout_seconds)
                 IS DISTINCT FROM (EXCLUDED.transport, EXCLUDED.url, EXCLUDED.command, EXCLUDED.category,
                                   EXCLUDED.enabled, EXCLUDED.timeout_seconds)
           RETURNING (xmax = 0) AS inserted""",
        server.name, server.transport, server.url, list(server.command) or None, server.category,
        server.enabled, server.timeout_seconds,
    )
    if row is None:
        return "unchanged"
    return "inserted" if row["inserted"] else "updated"


def load_registry_file(path: Path = REGISTRY_FILE, *, urls: Mapping[str, str] | None = None) -> list[ServerConfig]:
    """The entries of a registry file; ``urls`` overrides the URL of named servers (a test's
    sandbox on a free port, or a dev stack on another port)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        servers = msgspec.convert(raw, _RegistryFile).servers
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate server names")
    unknown = set(urls or {}) - set(names)
    if unknown:
        raise ValueError(f"URL overrides for servers not in {path}: {sorted(unknown)}")
    return [msgspec.structs.replace(s, url=urls[s.name]) if urls and s.name in urls else s for s in servers]


async def seed_registry(
    pool: asyncpg.Pool, path: Path = REGISTRY_FILE, *, urls: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Upsert every server of the registry file (idempotent: the file is the source of truth
    for the servers it lists; others are left alone). Returns what happened to each."""
    servers = load_registry_file(path, urls=urls)
    outcome: dict[str, str] = {}
    async with pool.acquire() as conn, conn.transaction():
        for server in servers:
            outcome[server.name] = await register_server(conn, server)
    changed = {k: v for k, v in outcome.items() if v != "unchanged"}
    if changed:
        log.info("MCP registry seeded from %s: %s", path, changed)
    return outcome


async def set_tenant_enabled(conn: asyncpg.Connection | asyncpg.Pool, server: str, tenant_id: str, enabled: bool) -> None:
    """Enable or disable a server for one tenant (a global disable still wins)."""
    await conn.execute(
        """INSERT INTO mcp_server_tenants (server, tenant_id, enabled) VALUES ($1, $2, $3)
           ON CONFLICT (server, tenant_id) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()""",
        server, tenant_id, enabled,
    )


async def server_for_tenant(pool: asyncpg.Pool, server: str, tenant_id: str) -> ServerConfig:
    """The registry entry, if the tenant may use it; otherwise a non-retryable error."""
    row = await pool.fetchrow(
        """SELECT s.name, s.transport, s.url, s.command, s.category, s.enabled, s.timeout_seconds,
                  t.enabled AS tenant_enabled
           FROM mcp_servers s
           LEFT JOIN mcp_server_tenants t ON t.server = s.name AND t.tenant_id = $2
           WHERE s.name = $1""",
        server, tenant_id,
    )
    if row is None:
        raise ApplicationError(f"MCP server {server!r} is not registered", type=SERVER_NOT_FOUND, non_retryable=True)
    if not row["enabled"] or row["tenant_enabled"] is False:
        scope = "globally" if not row["enabled"] else f"for tenant {tenant_id!r}"
        raise ApplicationError(f"MCP server {server!r} is disabled {scope}", type=SERVER_DISABLED, non_retryable=True)
    return ServerConfig(
        name=row["name"], transport=row["transport"], url=row["url"], command=tuple(row["command"] or ()),
        category=row["category"], enabled=True, timeout_seconds=row["timeout_seconds"],
    )


# --- errors ----------------------------------------------------------------------------------

def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}"[:500] if text else exc.__class__.__name__


def unavailable(server: str, exc: BaseException | str) -> ApplicationError:
    why = exc if isinstance(exc, str) else _describe(exc)
    return ApplicationError(f"MCP server {server!r} unavailable: {why}", type=UNAVAILABLE)


def connection_error(server: str, exc: BaseException) -> ApplicationError:
    """A failure of the connection itself: retryable, except a 4xx that means misconfiguration."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, httpx.HTTPStatusError):
            status = leaf.response.status_code
            if 400 <= status < 500 and status not in _RETRYABLE_HTTP_4XX:
                return ApplicationError(
                    f"MCP server {server!r} refused the request: HTTP {status}", type=REJECTED, non_retryable=True
                )
    interesting = [e for e in leaves if not isinstance(e, asyncio.CancelledError | anyio.get_cancelled_exc_class())]
    return unavailable(server, (interesting or leaves)[0])


def request_error(server: str, what: str, exc: BaseException) -> ApplicationError:
    """A failure of one request on a live session."""
    if isinstance(exc, McpError):
        if exc.error.code in _PERMANENT_RPC_CODES:
            return ApplicationError(f"{server}/{what}: {exc.error.message}", type=TOOL_ERROR, non_retryable=True)
        return unavailable(server, f"{what}: {exc.error.message} (code {exc.error.code})")
    if isinstance(exc, RuntimeError):
        # The client found the tool's output invalid against its declared output schema.
        return ApplicationError(f"{server}/{what}: {exc}", type=TOOL_ERROR, non_retryable=True)
    return connection_error(server, exc)


class _ConnectionLost(Exception):
    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(_describe(cause) if cause else "connection closed")
        self.cause = cause


# --- sessions --------------------------------------------------------------------------------

class _Connection:
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
        """Run one request, bounded by the server's timeout; ``_ConnectionLost`` if the session
        breaks meanwhile; other failures as classified ``ApplicationError``."""
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
            if self._owner in done or (isinstance(exc, McpError) and exc.error.code in _SESSION_GONE_CODES):
                raise _ConnectionLost(self._owner_failure() or exc)
            raise request_error(self.config.name, what, exc)
        call.cancel()
        if self._owner in done:
            raise _ConnectionLost(self._owner_failure())
        raise unavailable(self.config.name, f"{what} timed out after {self.config.timeout_seconds:g} s")

    def _owner_done(self, owner: asyncio.Task[None]) -> None:
        failure = None if owner.cancelled() else owner.exception()  # retrieved: no "never retrieved" noise
        if failure is not None and self._ready.is_set() and not self._closing.is_set():
            log.warning("MCP session to %s broke: %s", self.config.name, _describe(_leaves(failure)[0]))

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
        self._connections: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _connection(self, config: ServerConfig) -> tuple[_Connection, bool]:
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
            conn = _Connection(config)
            await conn.open()
            self._connections[config.name] = conn
            return conn, True

    async def _discard(self, conn: _Connection) -> None:
        if self._connections.get(conn.config.name) is conn:
            del self._connections[conn.config.name]
        await conn.aclose()

    async def run(self, config: ServerConfig, what: str, op: Callable[[_Connection], Awaitable[T]]) -> T:
        """Run ``op`` on the server's session. A reused session found broken (e.g. the server
        restarted) is replaced once at once; a fresh one that breaks is reported unavailable."""
        for attempt in range(2):
            conn, fresh = await self._connection(config)
            try:
                return await op(conn)
            except _ConnectionLost as lost:
                await self._discard(conn)
                if fresh or attempt:
                    raise connection_error(config.name, lost.cause or lost) from None
                log.info("MCP session to %s broke (%s); reconnecting", config.name, lost)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)


async def _tools(conn: _Connection, *, refresh: bool = False) -> dict[str, mcp_types.Tool]:
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


def _error_text(result: mcp_types.CallToolResult) -> str:
    texts = [b.text for b in result.content if isinstance(b, mcp_types.TextContent)]
    return (" ".join(texts) or "the tool reported an error")[:2000]


# --- activities ------------------------------------------------------------------------------

def _invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type=TOOL_ERROR, non_retryable=True)


def _check_names(tenant_id: str, server: str, tool: str | None = None) -> None:
    if not _TENANT.match(tenant_id):
        raise _invalid(f"invalid tenant id {tenant_id!r}")
    if not _SERVER_NAME.match(server):
        raise _invalid(f"invalid MCP server name {server!r}")
    if tool is not None and not _TOOL_NAME.match(tool):
        raise _invalid(f"invalid tool name {tool!r}")


def _current_workflow_id() -> str | None:
    try:
        return activity.info().workflow_id
    except RuntimeError:  # called outside an activity (a script, a unit test)
        return None


def _arguments(req: CallToolRequest, tool: mcp_types.Tool) -> dict[str, Any]:
    """The caller's arguments plus the request's identity where the tool declares it."""
    declared = (tool.inputSchema or {}).get("properties") or {}
    args = dict(req.arguments)
    for name, value in (("tenant_id", req.tenant_id), ("idempotency_key", req.idempotency_key)):
        if name not in declared:
            continue
        if name in args and args[name] != value:
            raise _invalid(f"argument {name}={args[name]!r} does not match the request's {name}")
        args[name] = value
    if "workflow_id" in declared and "workflow_id" not in args:
        wf = _current_workflow_id()
        if wf is not None:
            args["workflow_id"] = wf
    return args


class MCPActivities(Activities):
    """Holds the pool and the session manager; the worker registers the bound methods and
    awaits :meth:`aclose` when it stops."""
    task_queue = INTEGRATIONS_QUEUE
    default_policy = MCP_TOOL


    def __init__(self, pool: asyncpg.Pool, sessions: MCPSessionManager | None = None) -> None:
        self._pool = pool
        self._sessions = sessions or MCPSessionManager()

    async def aclose(self) -> None:
        await self._sessions.aclose()

    @activity.defn(name="mcp.list_tools")
    async def list_tools(self, req: ListToolsRequest) -> ListToolsResult:
        _check_names(req.tenant_id, req.server)
        config = await server_for_tenant(self._pool, req.server, req.tenant_id)

        async def op(conn: _Connection) -> dict[str, mcp_types.Tool]:
            return await _tools(conn, refresh=True)

        tools = await self._sessions.run(config, "tools/list", op)
        return ListToolsResult(
            server=req.server,
            tools=[
                ToolInfo(name=t.name, description=t.description, input_schema=t.inputSchema, output_schema=t.outputSchema)
                for t in tools.values()
            ],
        )

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        _check_names(req.tenant_id, req.server, req.tool)
        if not req.idempotency_key or len(req.idempotency_key) > 400:
            raise _invalid("idempotency_key must be 1 to 400 characters")
        config = await server_for_tenant(self._pool, req.server, req.tenant_id)

        async def op(conn: _Connection) -> mcp_types.CallToolResult:
            tools = await _tools(conn)
            if req.tool not in tools:
                tools = await _tools(conn, refresh=True)
            if req.tool not in tools:
                raise _invalid(f"MCP server {req.server!r} has no tool {req.tool!r}")
            args = _arguments(req, tools[req.tool])
            return await conn.request(f"tools/call {req.tool}", lambda s: s.call_tool(req.tool, args))

        result = await self._sessions.run(config, f"tools/call {req.tool}", op)
        if result.isError:
            raise ApplicationError(f"{req.server}/{req.tool}: {_error_text(result)}", type=TOOL_ERROR, non_retryable=True)
        return CallToolResult(server=req.server, tool=req.tool, content=tool_content(result), is_error=False)
