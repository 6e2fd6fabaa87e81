-- The registry of MCP servers the workers may call, and per-tenant enable/disable.
-- Seeded from mcp-servers.yaml (activities.mcp.seed_registry); read by the MCP activities on
-- every call, so disabling a server takes effect at once, without restarting a worker.
CREATE TABLE mcp_servers (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    transport       text NOT NULL CHECK (transport IN ('streamable-http', 'stdio')),
    url             text,
    command         text[],
    category        text NOT NULL DEFAULT 'general',
    enabled         boolean NOT NULL DEFAULT true,
    timeout_seconds double precision NOT NULL DEFAULT 30 CHECK (timeout_seconds > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (transport <> 'streamable-http' OR url IS NOT NULL),
    CHECK (transport <> 'stdio' OR cardinality(command) > 0)
);

-- A row here overrides the default (enabled) for one tenant. A server disabled globally stays
-- disabled for every tenant whatever this table says.
CREATE TABLE mcp_server_tenants (
    server          text NOT NULL REFERENCES mcp_servers (name) ON DELETE CASCADE ON UPDATE CASCADE,
    tenant_id       text NOT NULL,
    enabled         boolean NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, tenant_id)
);

-- GET /v1/outbox pages a tenant's outbox newest first by id (the cursor).
CREATE INDEX outbox_tenant_id_desc ON outbox (tenant_id, id DESC);
