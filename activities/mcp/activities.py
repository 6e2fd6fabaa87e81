"""The MCP activities: ``mcp.list_tools`` and ``mcp.call_tool`` (names fixed: histories replay).

Tools are called by name: a request without ``server`` goes where the registry routes the tool
for the tenant (:func:`activities.mcp.registry.resolve_server`); a request naming a server (an
agent given a server's tools, a recorded history) goes to that server. Either way the server must
be registered and enabled for the tenant.

Arguments the caller does not have to repeat: when a tool's input schema declares
``tenant_id``, ``idempotency_key`` or ``workflow_id``, the activity fills them from the request
(and the activity's workflow); arguments naming another tenant or key are refused. Tools that do
not declare them receive exactly the caller's arguments.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import asyncpg
import msgspec
from mcp import types as mcp_types
from temporalio import activity
from temporalio.common import RetryPolicy

from activities.mcp.errors import invalid, tool_error
from activities.mcp.registry import (
    SERVER_NAME,
    TENANT,
    TOOL_NAME,
    ServerConfig,
    remember_listing,
    resolve_server,
    server_for_tenant,
)
from activities.mcp.sessions import Connection, MCPSessionManager, error_text, list_server_tools, tool_content
from core.activity import Activities, ActivityPolicy
from core.names import INTEGRATIONS_QUEUE, PLATFORM_TENANT

log = logging.getLogger(__name__)

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


# --- payloads --------------------------------------------------------------------------------
# No msgspec.Meta constraints on activity inputs: a payload that fails to decode fails the
# activity with a *retryable* error. The activity checks them and fails non-retryably instead.

class ListToolsRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    # A server's whole listing; or None: the ``tools`` named, each from the server it routes to
    # for the tenant.
    server: str | None = None
    tools: list[str] = []


class ToolInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    server: str | None = None  # the server that answered (listing by tool name)


class ListToolsResult(msgspec.Struct, frozen=True, kw_only=True):
    server: str  # "" when listed by tool name (see each ToolInfo.server)
    tools: list[ToolInfo]


class CallToolRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    # None: the server the registry routes the tool to for the tenant. Kept so recorded
    # histories (which name a server) still decode and run as they did.
    server: str | None = None
    tool: str
    idempotency_key: str  # workflow id + step, never a uuid4
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class CallToolResult(msgspec.Struct, frozen=True, kw_only=True):
    server: str  # the server that answered
    tool: str
    # The tool's structured result (structuredContent), else its text content JSON-decoded
    # where it is JSON; several content blocks come as a list.
    content: Any
    # Always False here: a tool error raises MCPToolError. Kept for callers that log results.
    is_error: bool = False


# --- activities ------------------------------------------------------------------------------

def _check_names(tenant_id: str, server: str | None, tool: str | None = None) -> None:
    if not isinstance(tenant_id, str) or not TENANT.match(tenant_id):
        raise invalid(f"invalid tenant id {tenant_id!r}")
    if server is not None and not SERVER_NAME.match(server):
        raise invalid(f"invalid MCP server name {server!r}")
    if tool is not None and not TOOL_NAME.match(tool):
        raise invalid(f"invalid tool name {tool!r}")


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
            raise invalid(f"argument {name}={args[name]!r} does not match the request's {name}")
        args[name] = value
    if "workflow_id" in declared and "workflow_id" not in args:
        wf = _current_workflow_id()
        if wf is not None:
            args["workflow_id"] = wf
    return args


def _info(t: mcp_types.Tool, server: str | None = None) -> ToolInfo:
    return ToolInfo(name=t.name, description=t.description, input_schema=t.inputSchema, output_schema=t.outputSchema,
                    server=server)


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

    async def _listing(self, config: ServerConfig) -> dict[str, mcp_types.Tool]:
        async def op(conn: Connection) -> dict[str, mcp_types.Tool]:
            return await list_server_tools(conn, refresh=True)

        tools = await self._sessions.run(config, "tools/list", op)
        await self._remember(config.name, tools)
        return tools

    async def _remember(self, server: str, tools: dict[str, mcp_types.Tool]) -> None:
        """The listing, for ``GET /v1/tenants/{t}/tools`` (best effort: a failure to keep it
        never fails the call)."""
        try:
            await remember_listing(self._pool, server, [(t.name, t.description, t.inputSchema or {})
                                                        for t in tools.values()])
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("MCP tools of %s not kept for the API: %s", server, exc.__class__.__name__)

    async def refresh_listings(self) -> dict[str, int | str]:
        """List the tools of every enabled server and keep the listings for the API (the worker
        does this at start-up, so ``GET /v1/tenants/{t}/tools`` shows them before any call).
        Best effort: a server that does not answer is reported, never raised."""
        found: dict[str, int | str] = {}
        for name in [r["name"] for r in await self._pool.fetch("SELECT name FROM mcp_servers WHERE enabled")]:
            try:
                config = await server_for_tenant(self._pool, name, PLATFORM_TENANT)
                found[name] = len(await self._listing(config))
            except Exception as exc:  # noqa: BLE001 - one server down must not stop the others
                found[name] = exc.__class__.__name__
        return found

    @activity.defn(name="mcp.list_tools")
    async def list_tools(self, req: ListToolsRequest) -> ListToolsResult:
        _check_names(req.tenant_id, req.server)
        if req.server is not None:
            config = await server_for_tenant(self._pool, req.server, req.tenant_id)
            tools = await self._listing(config)
            return ListToolsResult(server=req.server, tools=[_info(t) for t in tools.values()])
        for name in req.tools:
            _check_names(req.tenant_id, None, name)
        configs = {name: await resolve_server(self._pool, name, req.tenant_id) for name in dict.fromkeys(req.tools)}
        listings: dict[str, dict[str, mcp_types.Tool]] = {}
        for config in configs.values():
            if config.name not in listings:
                listings[config.name] = await self._listing(config)
        # A tool its server does not offer is left out (the caller sees which are there).
        return ListToolsResult(server="", tools=[
            _info(listings[c.name][name], c.name) for name, c in configs.items() if name in listings[c.name]
        ])

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        _check_names(req.tenant_id, req.server, req.tool)
        if not req.idempotency_key or len(req.idempotency_key) > 400:
            raise invalid("idempotency_key must be 1 to 400 characters")
        if req.server is None:
            config = await resolve_server(self._pool, req.tool, req.tenant_id)
        else:
            config = await server_for_tenant(self._pool, req.server, req.tenant_id)
        server = config.name

        listed: list[dict[str, mcp_types.Tool]] = []

        async def op(conn: Connection) -> mcp_types.CallToolResult:
            known = conn.tools
            tools = await list_server_tools(conn)
            if req.tool not in tools:
                tools = await list_server_tools(conn, refresh=True)
            if tools is not known:
                listed.append(tools)
            if req.tool not in tools:
                raise invalid(f"MCP server {server!r} has no tool {req.tool!r}")
            args = _arguments(req, tools[req.tool])
            return await conn.request(f"tools/call {req.tool}", lambda s: s.call_tool(req.tool, args))

        result = await self._sessions.run(config, f"tools/call {req.tool}", op)
        if listed:
            await self._remember(server, listed[-1])
        if result.isError:
            raise tool_error(server, req.tool, error_text(result))
        return CallToolResult(server=server, tool=req.tool, content=tool_content(result), is_error=False)
