-- Triggers: which workflow an inbound event starts (or signals). Keyed by the event's source
-- (stripe, shopify, lago, generic, platform) and its type (orders/create, tenant.created...).
-- Seeded from code (activities/triggers.py, TRIGGERS) with ON CONFLICT DO NOTHING, so an
-- operator's `enabled = false` survives restarts. Read by the API's webhook and events routes.
CREATE TABLE triggers (
    source      text NOT NULL CHECK (source ~ '^[a-z][a-z0-9_-]{0,31}$'),
    event_type  text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 200),
    -- start: start the workflow (a duplicate id answers with the existing one);
    -- signal_with_start: signal it, starting it first when it is not running.
    action      text NOT NULL CHECK (action IN ('start', 'signal_with_start')),
    capability  text NOT NULL CHECK (capability ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    signal      text,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((action = 'signal_with_start') = (signal IS NOT NULL)),
    PRIMARY KEY (source, event_type)
);

-- Per-tenant secrets of the generic webhook (HMAC-SHA256 over "timestamp.body"). Rotation:
-- add the new secret, let the sender switch, then expire the old one; every secret not
-- expired is accepted, so two are valid while the sender switches.
CREATE TABLE webhook_secrets (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    secret      text NOT NULL CHECK (length(secret) >= 16),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_secrets_tenant ON webhook_secrets (tenant_id);
