-- Notifications of the approval protocol (reminders, escalations, timeouts): the feed the
-- portals show and the notification senders read. One row per workflow, request and event.
CREATE TABLE approval_notifications (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    tenant_id       text NOT NULL,
    workflow_id     text NOT NULL,
    request_id      text NOT NULL,
    event           text NOT NULL CHECK (event IN ('reminder', 'escalated', 'timed_out')),
    audience        text NOT NULL,
    roles           text[] NOT NULL,
    title           text NOT NULL,
    due_at          timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX approval_notifications_tenant ON approval_notifications (tenant_id, created_at DESC);
