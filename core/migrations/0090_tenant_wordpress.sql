-- A tenant's WordPress site, for the WordPress tools (create, update, schedule, publish posts
-- over the WordPress REST API with an application password). Written by the connections API
-- (PUT/DELETE /v1/tenants/{t}/connections/wordpress) with its audit entry; the application
-- password is read by the sandbox MCP server only, never listed by the API.
CREATE TABLE tenant_wordpress (
    tenant_id            text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    site_url             text NOT NULL CHECK (site_url ~ '^https?://' AND length(site_url) <= 2000),
    username             text NOT NULL CHECK (length(username) BETWEEN 1 AND 200),
    application_password text NOT NULL CHECK (length(application_password) BETWEEN 1 AND 200),
    updated_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
