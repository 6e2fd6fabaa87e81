"""The MCP registry over HTTP: which servers exist and which tools each takes, for which tenants.

- ``GET /v1/admin/mcp/servers`` (admins): every server with its global switch, per-tenant
  switches and tool routes. The registry holds addresses, never credentials (a server's own
  secrets stay in its configuration); a URL shows without user-info or query string, a stdio
  command without its arguments.
- ``PUT /v1/admin/mcp/servers/{name}`` (admins): register or update a server, its per-tenant
  switches and the tools it takes (for every tenant or for some). Validated (a 400 names the
  field) and audited.
- ``GET /v1/tenants/{t}/tools``: the tools the tenant can call and the server each routes to,
  with descriptions and input schemas from the servers' latest ``tools/list`` answer (kept by
  the MCP activities at every listing; a tool routed to a server not listed yet shows without
  them). Other tenants' callers get 404.

The PUT writes the registry rows itself, in one transaction with its audit entries, rather than
through a workflow: the registry is platform configuration, like the trigger table the API seeds
and the ``mcp-servers.yaml`` entries the worker seeds at start-up, not a tenant's business rows;
nothing outside Postgres changes (the activities read the registry on every call), so there is
no step to retry or resume, and one transaction makes the change and its audit entries land
together or not at all.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
import httpx
import msgspec
from litestar import Controller, Request, Router, get, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import JSONBody, PathParameter

from activities import netguard
from activities.mcp.registry import (
    SERVER_NAME_PATTERN,
    TOOL_NAME_PATTERN,
    RegistryEntry,
    ServerConfig,
    ServerView,
    ToolRoute,
    apply_server,
    registry_view,
)
from api.audit import write_entry
from api.auth import ADMIN_ROLES, ROLES, Principal
from api.errors import ConflictError
from core.names import SLUG_PATTERN, WEB_URL_PATTERN

# What a server may be: never a link-local (cloud metadata), multicast, unspecified or reserved
# literal address. Loopback and private networks are where MCP servers usually run (and how the
# tests and `bizosaas dev` run them); public hosts on any port.
_REFUSED_ADDRESSES = frozenset({netguard.LINK_LOCAL, netguard.MULTICAST, netguard.UNSPECIFIED, netguard.RESERVED})
MAX_ROUTES = 500
MAX_TENANTS = 1000

_SERVER = Annotated[str, PathParameter(pattern=SERVER_NAME_PATTERN, description="The server's registry name")]
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_Tenant = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]


class ToolRouteBody(msgspec.Struct, frozen=True, kw_only=True):
    tool: Annotated[str, msgspec.Meta(pattern=TOOL_NAME_PATTERN)]
    # Empty: every tenant. A tenant's own route wins over a route for every tenant.
    tenants: Annotated[list[_Tenant], msgspec.Meta(max_length=MAX_TENANTS)] = []


class ServerBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A server, whole (fields left out take their defaults), except ``tools``, ``default`` and
    ``tenants``: left out, they are left as they are."""

    transport: Literal["streamable-http", "stdio"]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=WEB_URL_PATTERN)] | None = None
    command: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]],
                       msgspec.Meta(max_length=50)] | None = None
    category: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "general"
    enabled: bool = True
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    # The tools this server takes (replaces its routes); [] takes none.
    tools: Annotated[list[ToolRouteBody], msgspec.Meta(max_length=MAX_ROUTES)] | None = None
    # true: the server takes every tool no route names (instead of the current default); false
    # on the default server leaves none (a tool without a route is then refused).
    default: bool | None = None
    # Per-tenant switches to set, e.g. {"acme": false}; a global disable still wins.
    tenants: Annotated[dict[_Tenant, bool], msgspec.Meta(max_length=MAX_TENANTS)] | None = None


class RegistryView(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[ServerView]


class TenantTool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    server: str  # where a call of this tool goes for the tenant
    route: Literal["tenant", "all", "default"]  # the tenant's own route, one for every tenant, or the default
    description: str | None = None
    input_schema: dict[str, Any] | None = None  # None: the server's tools were not listed yet


class TenantTools(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    default_server: str | None
    tools: list[TenantTool]


def _bad(key: str, message: str) -> ValidationException:
    """400 naming the field, shaped like Litestar's own validation errors."""
    return ValidationException(detail=f"Validation failed: {key}: {message}",
                               extra=[{"key": key, "message": message, "source": "body"}])


def _check_url(url: str) -> str:
    try:
        target = netguard.check_url(url)
    except netguard.URLRefused as exc:
        raise _bad("url", exc.message) from None
    if target.url.query:
        raise _bad("url", "no query string: credentials belong to the server's own configuration")
    if target.literal is not None and netguard.category(target.literal) in _REFUSED_ADDRESSES:
        raise _bad("url", f"{target.literal} is not an address an MCP server may have")
    return str(target.url)


def _entry(name: str, body: ServerBody) -> RegistryEntry:
    if body.transport == "streamable-http":
        if body.url is None:
            raise _bad("url", "a streamable-http server needs a url")
        if body.command:
            raise _bad("command", "only a stdio server has a command")
        url, command = _check_url(body.url), ()
    else:
        if not body.command:
            raise _bad("command", "a stdio server needs a command: [program, arg, ...]")
        if body.url is not None:
            raise _bad("url", "a stdio server has no url")
        url, command = None, tuple(body.command)
    routes = None
    if body.tools is not None:
        seen: set[tuple[str, str | None]] = set()
        for route in body.tools:
            for tenant in route.tenants or [None]:
                if (route.tool, tenant) in seen:
                    raise _bad("tools", f"tool {route.tool!r} is listed twice for {tenant or 'every tenant'}")
                seen.add((route.tool, tenant))
        routes = [ToolRoute(tool=r.tool, tenants=list(dict.fromkeys(r.tenants))) for r in body.tools]
    server = ServerConfig(name=name, transport=body.transport, url=url, command=command, category=body.category,
                          enabled=body.enabled, timeout_seconds=body.timeout_seconds)
    return RegistryEntry(server=server, routes=routes, default=body.default, tenants=dict(body.tenants or {}))


def _redact(view: ServerView) -> ServerView:
    url = view.url
    if url:
        try:
            url = str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
        except (httpx.InvalidURL, ValueError, TypeError):
            url = None
    return msgspec.structs.replace(view, url=url, command=view.command[:1])


async def _audit(conn: asyncpg.Connection, actor: str, name: str, body: ServerBody, outcome: str) -> None:
    """One entry for the platform, and one per tenant whose switches or routes the change names."""
    details = {"server": name, "outcome": outcome, "change": msgspec.to_builtins(body)}
    details["change"].pop("url", None)  # addresses are configuration, not history
    details["change"].pop("command", None)
    tenants = set((body.tenants or {}).keys()) | {t for r in body.tools or [] for t in r.tenants}
    for tenant in ["platform", *sorted(tenants)]:
        await write_entry(conn, subject=f"mcp-server:{name}:{tenant}", tenant_id=tenant, actor=actor,
                          action="mcp.server_registered", details=details)


class McpAdminController(Controller):
    path = "/v1/admin/mcp"
    tags = ["mcp"]

    @get("/servers", operation_id="list_mcp_servers", summary="The MCP servers, their switches and tool routes",
         description="Admins only. Addresses without credentials (no user-info, query string or command arguments).",
         opt={"roles": ADMIN_ROLES})
    async def list_servers(self, db: NamedDependency[asyncpg.Pool]) -> RegistryView:
        return RegistryView(servers=[_redact(v) for v in await registry_view(db)])

    @put("/servers/{name:str}", operation_id="put_mcp_server", summary="Register or update an MCP server",
         description=(
             "Admins only. `tools` (the tools this server takes, for every tenant or the tenants "
             "listed) replaces the server's routes; `default: true` makes it the server of every "
             "tool no route names; `tenants` sets per-tenant switches. Left out, these three are "
             "left as they are. A streamable-http server needs an http(s) URL. Audited."),
         opt={"roles": ADMIN_ROLES}, raises=[ConflictError])
    async def put_server(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                         name: _SERVER, data: JSONBody[ServerBody]) -> ServerView:
        entry = _entry(name, data)
        try:
            async with db.acquire() as conn, conn.transaction():
                outcome = await apply_server(conn, entry)
                await _audit(conn, request.user.sub, name, data, outcome)
        except asyncpg.UniqueViolationError:  # another change of the default or routes won the race
            raise ConflictError("the registry changed meanwhile; try again") from None
        view = next(v for v in await registry_view(db) if v.name == name)
        return _redact(view)


_TENANT_TOOLS = """
    WITH tenant_servers AS (
        SELECT s.name, s.is_default FROM mcp_servers s
        LEFT JOIN mcp_server_tenants t ON t.server = s.name AND t.tenant_id = $1
        WHERE s.enabled AND t.enabled IS NOT false
    ), routes AS (
        SELECT DISTINCT ON (tool) tool, server, CASE WHEN tenant_id IS NULL THEN 'all' ELSE 'tenant' END AS via
        FROM mcp_tool_routes WHERE tenant_id = $1 OR tenant_id IS NULL
        ORDER BY tool, tenant_id NULLS LAST
    ), chosen AS (
        SELECT tool, server, via FROM routes
        UNION ALL
        SELECT l.tool, d.name, 'default' FROM mcp_server_tools l
        JOIN mcp_servers d ON d.name = l.server AND d.is_default
        WHERE NOT EXISTS (SELECT 1 FROM routes r WHERE r.tool = l.tool)
    )
    SELECT c.tool, c.server, c.via, l.description, l.input_schema, l.tool IS NOT NULL AS listed,
           EXISTS (SELECT 1 FROM mcp_server_tools x WHERE x.server = c.server) AS server_listed
    FROM chosen c
    JOIN tenant_servers ts ON ts.name = c.server
    LEFT JOIN mcp_server_tools l ON l.server = c.server AND l.tool = c.tool
    ORDER BY c.tool"""


class TenantToolsController(Controller):
    path = "/v1/tenants/{tenant_id:str}/tools"
    tags = ["mcp"]

    @get("/", operation_id="list_tenant_tools", summary="The tools a tenant can call and the server each goes to",
         description=(
             "A tool routed to a server disabled for the tenant (or globally) is not listed: a call "
             "of it is refused. Descriptions and input schemas come from the servers' latest "
             "tools/list answer. Other tenants' callers get 404."),
         opt={"roles": frozenset(ROLES)}, raises=[NotFoundException])
    async def list_tools(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                         tenant_id: _TENANT_ID) -> TenantTools:
        if not request.user.can_see_tenant(tenant_id):
            raise NotFoundException(f"tenant {tenant_id!r} not found")
        async with db.acquire() as conn:
            rows = await conn.fetch(_TENANT_TOOLS, tenant_id)
            default = await conn.fetchval("SELECT name FROM mcp_servers WHERE is_default")
        tools = [
            TenantTool(name=r["tool"], server=r["server"], route=r["via"], description=r["description"],
                       input_schema=r["input_schema"] if r["listed"] else None)
            for r in rows
            # A server that listed its tools and lacks this one cannot take it.
            if r["listed"] or not r["server_listed"]
        ]
        return TenantTools(tenant_id=tenant_id, default_server=default, tools=tools)


def mcp_router() -> Router:
    return Router(path="/", route_handlers=[McpAdminController, TenantToolsController])
