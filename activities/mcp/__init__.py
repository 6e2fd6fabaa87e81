"""MCP tools as Temporal activities.

- :mod:`~activities.mcp.registry`: the servers, per-tenant switches and tool routes (Postgres,
  seeded from ``mcp-servers.yaml``), and which server takes a tool for a tenant.
- :mod:`~activities.mcp.sessions`: one MCP session per server per worker process.
- :mod:`~activities.mcp.activities`: ``mcp.list_tools`` and ``mcp.call_tool``.
- :mod:`~activities.mcp.tools`: the typed arguments and results of the tools workflows call.
- :mod:`~activities.mcp.errors`: the error types callers match on.
"""

from activities.mcp.activities import (
    MCP_TOOL,
    MCP_TOOL_DEADLINE,
    MCP_TOOL_RETRY,
    MCP_TOOL_TIMEOUT,
    CallToolRequest,
    CallToolResult,
    ListToolsRequest,
    ListToolsResult,
    MCPActivities,
    ToolInfo,
)
from activities.mcp.errors import (
    NOT_CONNECTED,
    RATE_LIMITED,
    REJECTED,
    SERVER_DISABLED,
    SERVER_NOT_FOUND,
    TOOL_ERROR,
    UNAVAILABLE,
    connection_error,
    request_error,
    unavailable,
)
from activities.mcp.registry import (
    REGISTRY_FILE,
    RegistryEntry,
    ServerConfig,
    ToolRoute,
    apply_server,
    load_registry,
    load_registry_file,
    register_server,
    registry_view,
    resolve_server,
    seed_registry,
    server_for_tenant,
    set_tenant_enabled,
)
from activities.mcp.sessions import MCPSessionManager, tool_content

__all__ = [
    "MCP_TOOL", "MCP_TOOL_DEADLINE", "MCP_TOOL_RETRY", "MCP_TOOL_TIMEOUT", "NOT_CONNECTED", "RATE_LIMITED",
    "REGISTRY_FILE", "REJECTED",
    "SERVER_DISABLED", "SERVER_NOT_FOUND", "TOOL_ERROR", "UNAVAILABLE", "CallToolRequest", "CallToolResult",
    "ListToolsRequest", "ListToolsResult", "MCPActivities", "MCPSessionManager", "RegistryEntry", "ServerConfig",
    "ToolInfo", "ToolRoute", "apply_server", "connection_error", "load_registry", "load_registry_file",
    "register_server", "registry_view", "request_error", "resolve_server", "seed_registry", "server_for_tenant",
    "set_tenant_enabled", "tool_content", "unavailable",
]
