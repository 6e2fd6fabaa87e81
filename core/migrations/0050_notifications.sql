-- Notifications that arrive: approval events (requested, reminder, escalated, decided,
-- timed_out) delivered to people by their channels, and who those people are.

ALTER TABLE approval_notifications DROP CONSTRAINT IF EXISTS approval_notifications_event_check;
ALTER TABLE approval_notifications ADD CONSTRAINT approval_notifications_event_check
    CHECK (event IN ('requested', 'reminder', 'escalated', 'decided', 'timed_out'));
ALTER TABLE approval_notifications ADD COLUMN IF NOT EXISTS outcome text;
ALTER TABLE approval_notifications ADD COLUMN IF NOT EXISTS decided_by text;

-- Who hears about a tenant's approvals, per role (client, partner, ...). A tenant without a
-- row for the client role has its owner's email (tenants.owner_email, from onboarding).
-- Platform staff (admin, finance, support, super_admin) come from BIZ_NOTIFY_PLATFORM_RECIPIENTS.
CREATE TABLE notification_recipients (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    role        text NOT NULL CHECK (role ~ '^[a-z_]{2,32}$'),
    email       text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$' AND length(email) <= 254),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, role, email)
);

-- One row per notification, channel and recipient: the delivery log, and what makes a
-- retried notifier send nothing twice (the key is the notification's + channel + recipient).
CREATE TABLE notification_deliveries (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    notification_key text NOT NULL,
    tenant_id        text NOT NULL,
    workflow_id      text NOT NULL,
    event            text NOT NULL,
    channel          text NOT NULL,
    recipient        text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_deliveries_tenant ON notification_deliveries (tenant_id, created_at DESC);
CREATE INDEX notification_deliveries_notification ON notification_deliveries (notification_key);

-- A tenant's own SMTP server for the send_email tool (overrides BIZ_SMTP_*). The password is
-- read by the sandbox MCP server only, never listed by the API.
CREATE TABLE tenant_smtp (
    tenant_id    text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    host         text NOT NULL,
    port         integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    username     text,
    password     text,
    security     text NOT NULL DEFAULT 'none' CHECK (security IN ('none', 'starttls', 'tls')),
    from_address text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
