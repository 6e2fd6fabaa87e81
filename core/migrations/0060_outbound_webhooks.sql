-- Outbound webhooks: the endpoints a tenant registers to receive its events (signed with the
-- Standard Webhooks scheme), and one row per delivery attempt of an event to an endpoint.
CREATE TABLE webhook_endpoints (
    id                  text PRIMARY KEY,                -- we_<random>
    tenant_id           text NOT NULL,
    url                 text NOT NULL,
    description         text NOT NULL DEFAULT '',
    -- The signing secret (whsec_<base64>), shown once when created or rotated, never read back.
    secret              text NOT NULL,
    -- After a rotation the previous secret signs too (a second signature) until this time, so
    -- a receiver can switch secrets without losing a delivery.
    previous_secret     text,
    previous_secret_until timestamptz,
    -- Event types delivered; empty: every event type.
    event_types         text[] NOT NULL DEFAULT '{}',
    enabled             boolean NOT NULL DEFAULT true,
    created_by          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at);

-- One row per attempt. event_id is the `webhook-id` header: the same on every attempt of one
-- event, so receivers dedupe. At most one successful attempt per (endpoint, event).
-- endpoint_id is not a foreign key: the log outlives a deleted endpoint.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    endpoint_id     text NOT NULL,
    url             text NOT NULL,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    status          text NOT NULL CHECK (status IN ('succeeded', 'failed', 'refused')),
    status_code     integer,
    error           text,
    duration_ms     double precision NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id, attempt)
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, event_id)
    WHERE status IN ('succeeded', 'refused');
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant_id, id DESC);
