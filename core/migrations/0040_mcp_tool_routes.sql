-- Tools by name: which MCP server takes a tool, for one tenant or for every tenant, and the
-- default server that takes every tool no route names (activities.mcp.registry.resolve_server:
-- the tenant's route > the route for every tenant > the default server).
ALTER TABLE mcp_servers ADD COLUMN is_default boolean NOT NULL DEFAULT false;
-- At most one default server.
CREATE UNIQUE INDEX mcp_servers_one_default ON mcp_servers (is_default) WHERE is_default;

CREATE TABLE mcp_tool_routes (
    tool        text NOT NULL CHECK (tool ~ '^[A-Za-z0-9_.:/-]{1,128}$'),
    tenant_id   text,  -- NULL: every tenant
    server      text NOT NULL REFERENCES mcp_servers (name) ON DELETE CASCADE ON UPDATE CASCADE,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One server per tool and tenant, and one per tool for every tenant (NULL is not a duplicate
-- for a plain unique constraint, hence two partial indexes).
CREATE UNIQUE INDEX mcp_tool_routes_tenant ON mcp_tool_routes (tool, tenant_id) WHERE tenant_id IS NOT NULL;
CREATE UNIQUE INDEX mcp_tool_routes_all ON mcp_tool_routes (tool) WHERE tenant_id IS NULL;
CREATE INDEX mcp_tool_routes_server ON mcp_tool_routes (server);

-- The tools each server listed the last time a worker asked it (tools/list), for
-- GET /v1/tenants/{t}/tools: written by the MCP activities, read by the API.
CREATE TABLE mcp_server_tools (
    server       text NOT NULL REFERENCES mcp_servers (name) ON DELETE CASCADE ON UPDATE CASCADE,
    tool         text NOT NULL,
    description  text,
    input_schema jsonb NOT NULL DEFAULT '{}'::jsonb,
    listed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, tool)
);
