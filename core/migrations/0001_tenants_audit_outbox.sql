-- Tenants, the audit log and the outbox of sandboxed outside effects.
CREATE TABLE tenants (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    plan            text NOT NULL,
    owner_email     text NOT NULL,
    timezone        text NOT NULL DEFAULT 'UTC',
    status          text NOT NULL DEFAULT 'onboarding'
                    CHECK (status IN ('onboarding', 'active', 'suspended', 'closed')),
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by_workflow text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every decision and every state change a person may ask about later. Written by
-- activities only, once per idempotency key (workflow id + step).
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    tenant_id       text NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL,
    workflow_id     text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_created ON audit_log (tenant_id, created_at DESC);

-- Outside effects (email, WhatsApp, social posts, ads, CMS, CRM) recorded by the sandbox
-- tools: exactly what would have been sent, once per idempotency key.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    tenant_id       text NOT NULL,
    tool            text NOT NULL,
    arguments       jsonb NOT NULL,
    response        jsonb NOT NULL DEFAULT '{}'::jsonb,
    workflow_id     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_tenant_created ON outbox (tenant_id, created_at DESC);
