-- The scheduled capabilities a tenant has turned on (schedules/catalogue.py), with the inputs
-- their schedules need. Written only by the TenantCapabilities workflow's activities; read by
-- the schedule reconciler, which gives every active tenant one Temporal schedule per declared
-- schedule of each enabled capability, in the tenant's time zone. Disabling keeps the row
-- (enabled = false) so re-enabling remembers the inputs.
CREATE TABLE tenant_capabilities (
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    capability   text NOT NULL CHECK (capability ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    enabled      boolean NOT NULL DEFAULT true,
    -- The site a website capability (presence-audit) works on: tenants has no such column.
    website_url  text,
    updated_by   text NOT NULL DEFAULT 'system',
    workflow_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, capability)
);
