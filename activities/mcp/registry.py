"""The MCP registry: which servers exist, who may use them, and which server takes each tool.

It lives in Postgres and is read on every call, so a change takes effect at once:

- ``mcp_servers``: one row per server (transport, address, category, global switch, timeout);
  one of them may be the *default* server (``is_default``), the one that takes every tool no
  route names.
- ``mcp_server_tenants``: a per-tenant switch overriding the default (enabled); a server
  disabled globally stays disabled for everyone.
- ``mcp_tool_routes``: ``(tool, tenant_id, server)``; ``tenant_id`` NULL means every tenant.

Workflows call tools by name (``CallToolRequest.server`` None). :func:`resolve_server` picks the
server: a route of the tool for the tenant, else a route of the tool for every tenant, else the
default server. The server picked must be enabled globally and for the tenant: a disabled route is
refused (``MCPServerDisabled``), it never falls back to another server, so a tenant whose email
goes through its own provider never has it sent elsewhere behind its back.

:func:`seed_registry` upserts what ``mcp-servers.yaml`` says (servers, the default server, and
each listed server's tools when the entry has a ``tools:`` key); ``PUT /v1/admin/mcp/servers/{name}``
changes the same rows through :func:`apply_server`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
import yaml
from temporalio.exceptions import ApplicationError

from activities.mcp.errors import SERVER_DISABLED, SERVER_NOT_FOUND
from core.names import SLUG_PATTERN

log = logging.getLogger(__name__)

REGISTRY_FILE = Path(__file__).resolve().parent.parent.parent / "mcp-servers.yaml"

SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"
SERVER_NAME = re.compile(SERVER_NAME_PATTERN)
TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
TENANT = re.compile(SLUG_PATTERN)


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One registry entry (a row of ``mcp_servers``, or an entry of mcp-servers.yaml)."""

    name: Annotated[str, msgspec.Meta(pattern=SERVER_NAME_PATTERN)]
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


class ToolRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A tool a server takes: for every tenant (``tenants`` empty) or for the tenants listed."""

    tool: Annotated[str, msgspec.Meta(pattern=TOOL_NAME_PATTERN)]
    tenants: list[Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]] = []


class _FileServer(ServerConfig, frozen=True, kw_only=True):
    # None: the file says nothing of this server's routes (rows are left as they are); a list
    # (even empty) replaces them. A bare name is a route for every tenant.
    tools: list[Annotated[str, msgspec.Meta(pattern=TOOL_NAME_PATTERN)] | ToolRoute] | None = None


class _RegistryFile(msgspec.Struct, frozen=True, kw_only=True):
    default_server: Annotated[str, msgspec.Meta(pattern=SERVER_NAME_PATTERN)] | None = None
    servers: list[_FileServer] = msgspec.field(default_factory=list)


class RegistryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A server as the registry file (or the admin API) describes it, routes included."""

    server: ServerConfig
    routes: list[ToolRoute] | None = None  # None: leave the server's routes as they are
    default: bool | None = None  # None: leave the default server as it is
    tenants: dict[str, bool] = {}  # per-tenant switches to set (others left as they are)


def _config(entry: _FileServer) -> ServerConfig:
    return ServerConfig(name=entry.name, transport=entry.transport, url=entry.url, command=entry.command,
                        category=entry.category, enabled=entry.enabled, timeout_seconds=entry.timeout_seconds)


def _routes(tools: list[str | ToolRoute] | None) -> list[ToolRoute] | None:
    if tools is None:
        return None
    return [ToolRoute(tool=t) if isinstance(t, str) else t for t in tools]


# --- writing ---------------------------------------------------------------------------------

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


async def set_tenant_enabled(conn: asyncpg.Connection | asyncpg.Pool, server: str, tenant_id: str, enabled: bool) -> None:
    """Enable or disable a server for one tenant (a global disable still wins)."""
    await conn.execute(
        """INSERT INTO mcp_server_tenants (server, tenant_id, enabled) VALUES ($1, $2, $3)
           ON CONFLICT (server, tenant_id) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()""",
        server, tenant_id, enabled,
    )


async def set_default_server(conn: asyncpg.Connection, server: str | None) -> None:
    """Make ``server`` the default (None: no default; tools without a route then fail)."""
    await conn.execute("UPDATE mcp_servers SET is_default = false WHERE is_default AND name IS DISTINCT FROM $1", server)
    if server is not None:
        await conn.execute("UPDATE mcp_servers SET is_default = true WHERE name = $1 AND NOT is_default", server)


async def replace_routes(conn: asyncpg.Connection, server: str, routes: list[ToolRoute]) -> None:
    """The tools ``server`` takes, for which tenants: replaces its routes. A route another server
    held for the same tool and tenant moves to this one (one server per tool and tenant)."""
    await conn.execute("DELETE FROM mcp_tool_routes WHERE server = $1", server)
    for route in routes:
        for tenant in route.tenants or [None]:
            if tenant is None:
                await conn.execute(
                    """INSERT INTO mcp_tool_routes (tool, tenant_id, server) VALUES ($1, NULL, $2)
                       ON CONFLICT (tool) WHERE tenant_id IS NULL
                       DO UPDATE SET server = EXCLUDED.server, updated_at = now()""", route.tool, server)
            else:
                await conn.execute(
                    """INSERT INTO mcp_tool_routes (tool, tenant_id, server) VALUES ($1, $2, $3)
                       ON CONFLICT (tool, tenant_id) WHERE tenant_id IS NOT NULL
                       DO UPDATE SET server = EXCLUDED.server, updated_at = now()""", route.tool, tenant, server)


async def apply_server(conn: asyncpg.Connection, entry: RegistryEntry) -> str:
    """Register or update one server with its routes, default flag and tenant switches (in the
    caller's transaction). Returns ``inserted``, ``updated`` or ``unchanged`` (the server row)."""
    outcome = await register_server(conn, entry.server)
    if entry.routes is not None:
        await replace_routes(conn, entry.server.name, entry.routes)
    if entry.default is True:
        await set_default_server(conn, entry.server.name)
    elif entry.default is False:
        await conn.execute("UPDATE mcp_servers SET is_default = false WHERE name = $1 AND is_default", entry.server.name)
    for tenant, enabled in sorted(entry.tenants.items()):
        await set_tenant_enabled(conn, entry.server.name, tenant, enabled)
    return outcome


def load_registry(path: Path = REGISTRY_FILE, *, urls: Mapping[str, str] | None = None) -> tuple[list[RegistryEntry], str | None]:
    """The entries of a registry file and its default server; ``urls`` overrides the URL of
    named servers (a test's sandbox on a free port, or a dev stack on another port)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        registry = msgspec.convert(raw, _RegistryFile)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    names = [s.name for s in registry.servers]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate server names")
    if registry.default_server is not None and registry.default_server not in names:
        raise ValueError(f"{path}: default_server {registry.default_server!r} is not a listed server")
    unknown = set(urls or {}) - set(names)
    if unknown:
        raise ValueError(f"URL overrides for servers not in {path}: {sorted(unknown)}")
    entries = []
    for s in registry.servers:
        config = _config(s)
        if urls and s.name in urls:
            config = msgspec.structs.replace(config, url=urls[s.name])
        entries.append(RegistryEntry(server=config, routes=_routes(s.tools)))
    return entries, registry.default_server


def load_registry_file(path: Path = REGISTRY_FILE, *, urls: Mapping[str, str] | None = None) -> list[ServerConfig]:
    """The servers of a registry file (see :func:`load_registry`)."""
    return [e.server for e in load_registry(path, urls=urls)[0]]


async def seed_registry(
    pool: asyncpg.Pool, path: Path = REGISTRY_FILE, *, urls: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Upsert every server of the registry file, its routes where the entry lists ``tools``, and
    the default server where the file names one (idempotent: the file is the source of truth for
    what it says; other servers and routes are left alone). Returns what happened to each server."""
    entries, default = load_registry(path, urls=urls)
    outcome: dict[str, str] = {}
    async with pool.acquire() as conn, conn.transaction():
        for entry in entries:
            outcome[entry.server.name] = await apply_server(conn, entry)
        if default is not None:
            await set_default_server(conn, default)
    changed = {k: v for k, v in outcome.items() if v != "unchanged"}
    if changed:
        log.info("MCP registry seeded from %s: %s", path, changed)
    return outcome


async def remember_listing(pool: asyncpg.Pool, server: str, tools: list[tuple[str, str | None, dict[str, Any]]]) -> None:
    """Keep a server's latest tools/list answer (name, description, input schema) for the API."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM mcp_server_tools WHERE server = $1", server)
        await conn.executemany(
            """INSERT INTO mcp_server_tools (server, tool, description, input_schema) VALUES ($1, $2, $3, $4)""",
            [(server, name, description, schema) for name, description, schema in tools],
        )


# --- reading ---------------------------------------------------------------------------------

_SERVER_COLUMNS = """s.name, s.transport, s.url, s.command, s.category, s.enabled, s.timeout_seconds,
                     t.enabled AS tenant_enabled"""


def _usable(row: asyncpg.Record, tenant_id: str, why: str = "") -> ServerConfig:
    server = row["name"]
    if not row["enabled"] or row["tenant_enabled"] is False:
        scope = "globally" if not row["enabled"] else f"for tenant {tenant_id!r}"
        raise ApplicationError(f"MCP server {server!r}{why} is disabled {scope}", type=SERVER_DISABLED, non_retryable=True)
    return ServerConfig(
        name=server, transport=row["transport"], url=row["url"], command=tuple(row["command"] or ()),
        category=row["category"], enabled=True, timeout_seconds=row["timeout_seconds"],
    )


async def server_for_tenant(pool: asyncpg.Pool | asyncpg.Connection, server: str, tenant_id: str) -> ServerConfig:
    """The registry entry, if the tenant may use it; otherwise a non-retryable error."""
    row = await pool.fetchrow(
        f"""SELECT {_SERVER_COLUMNS}
            FROM mcp_servers s
            LEFT JOIN mcp_server_tenants t ON t.server = s.name AND t.tenant_id = $2
            WHERE s.name = $1""",
        server, tenant_id,
    )
    if row is None:
        raise ApplicationError(f"MCP server {server!r} is not registered", type=SERVER_NOT_FOUND, non_retryable=True)
    return _usable(row, tenant_id)


# The route ranks, best first: the tenant's own route, a route for every tenant, the default.
ROUTE_TENANT, ROUTE_ALL, ROUTE_DEFAULT = "tenant", "all", "default"
_RESOLVE = f"""
    SELECT {_SERVER_COLUMNS}, c.via
    FROM (SELECT server, 0 AS rank, '{ROUTE_TENANT}' AS via FROM mcp_tool_routes WHERE tool = $1 AND tenant_id = $2
          UNION ALL
          SELECT server, 1, '{ROUTE_ALL}' FROM mcp_tool_routes WHERE tool = $1 AND tenant_id IS NULL
          UNION ALL
          SELECT name, 2, '{ROUTE_DEFAULT}' FROM mcp_servers WHERE is_default) c
    JOIN mcp_servers s ON s.name = c.server
    LEFT JOIN mcp_server_tenants t ON t.server = s.name AND t.tenant_id = $2
    ORDER BY c.rank
    LIMIT 1"""


async def resolve_server(pool: asyncpg.Pool | asyncpg.Connection, tool: str, tenant_id: str) -> ServerConfig:
    """The server that takes ``tool`` for ``tenant_id`` (see the module's doc), if enabled."""
    row = await pool.fetchrow(_RESOLVE, tool, tenant_id)
    if row is None:
        raise ApplicationError(f"no MCP server takes tool {tool!r}: no route and no default server",
                               type=SERVER_NOT_FOUND, non_retryable=True)
    return _usable(row, tenant_id, f" (route of {tool!r}: {row['via']})")


class RouteView(msgspec.Struct, frozen=True, kw_only=True):
    tool: str
    tenant_id: str | None  # None: every tenant
    server: str


class ServerView(msgspec.Struct, frozen=True, kw_only=True):
    """A registry entry as an admin sees it (the registry holds no secrets: URLs and commands
    only; credentials belong to the servers' own configuration)."""

    name: str
    transport: str
    url: str | None
    command: list[str]
    category: str
    enabled: bool
    default: bool
    timeout_seconds: float
    tenants: dict[str, bool]  # per-tenant switches
    routes: list[RouteView]
    updated_at: str


async def registry_view(pool: asyncpg.Pool, tenant_id: str | None = None) -> list[ServerView]:
    """Every server with its switches and routes (``tenant_id``: only that tenant's switches and
    routes, plus the routes for every tenant)."""
    async with pool.acquire() as conn:
        servers = await conn.fetch("SELECT * FROM mcp_servers ORDER BY name")
        switches = await conn.fetch(
            "SELECT server, tenant_id, enabled FROM mcp_server_tenants WHERE $1::text IS NULL OR tenant_id = $1 "
            "ORDER BY server, tenant_id", tenant_id)
        routes = await conn.fetch(
            "SELECT tool, tenant_id, server FROM mcp_tool_routes "
            "WHERE $1::text IS NULL OR tenant_id IS NULL OR tenant_id = $1 ORDER BY tool, tenant_id NULLS FIRST",
            tenant_id)
    by_server: dict[str, dict[str, Any]] = {s["name"]: {"tenants": {}, "routes": []} for s in servers}
    for sw in switches:
        by_server[sw["server"]]["tenants"][sw["tenant_id"]] = sw["enabled"]
    for r in routes:
        by_server[r["server"]]["routes"].append(RouteView(tool=r["tool"], tenant_id=r["tenant_id"], server=r["server"]))
    return [
        ServerView(name=s["name"], transport=s["transport"], url=s["url"], command=list(s["command"] or []),
                   category=s["category"], enabled=s["enabled"], default=s["is_default"],
                   timeout_seconds=s["timeout_seconds"], updated_at=s["updated_at"].isoformat(),
                   **by_server[s["name"]])
        for s in servers
    ]
