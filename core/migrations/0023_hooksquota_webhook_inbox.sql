-- A Shopify shop belongs to one tenant. The webhook's X-Shopify-Shop-Domain is not covered by
-- Shopify's signature, so two tenants claiming one shop would let either receive the other's
-- orders. Existing duplicates keep the domain on the tenant webhooks already went to (the
-- smallest id, as the old look-up did); the others lose it, kept aside under
-- shopify_shop_domain_refused for an operator to see.
UPDATE tenants t
   SET settings = (t.settings - 'shopify_shop_domain')
                  || jsonb_build_object('shopify_shop_domain_refused', t.settings->'shopify_shop_domain'),
       updated_at = now()
 WHERE t.settings ? 'shopify_shop_domain'
   AND EXISTS (SELECT 1 FROM tenants o
                WHERE o.settings ? 'shopify_shop_domain'
                  AND lower(o.settings->>'shopify_shop_domain') = lower(t.settings->>'shopify_shop_domain')
                  AND o.id < t.id);
DROP INDEX IF EXISTS tenants_shopify_shop_domain;
-- Setting a domain another tenant has (in any letter case) fails with
-- `duplicate key value violates unique constraint "tenants_shopify_shop_domain_unique"`.
CREATE UNIQUE INDEX tenants_shopify_shop_domain_unique ON tenants (lower(settings->>'shopify_shop_domain'))
    WHERE settings ? 'shopify_shop_domain';

-- The webhook inbox: every event the API accepted (signed webhooks and platform events), written
-- before the 2xx answer. It is the API's own record of deliveries, like the trigger table its
-- configuration; business rows stay with the activities. It stops replays: a delivery whose
-- sender event id, or whose exact body, was seen before (same source, type and scope) answers
-- 200 "duplicate" and starts nothing. The body key matters where the id travels outside the
-- signature (Shopify, Lago headers): a captured body replayed under a new id is still the
-- same signed body.
--
-- Retention: rows older than BIZ_WEBHOOKS_INBOX_RETENTION_DAYS (default 30, never less than
-- the replay window) are deleted by the API, at start and hourly (api/inbox.py).
CREATE TABLE webhook_inbox (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL CHECK (source ~ '^[a-z][a-z0-9_-]{0,31}$'),
    -- The sender's id of the event: Stripe `id`, Shopify X-Shopify-Event-Id (else
    -- X-Shopify-Webhook-Id), Lago X-Lago-Unique-Key, generic and platform `id`.
    event_id     text CHECK (length(event_id) BETWEEN 1 AND 200),
    event_type   text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 200),
    -- Whose id space event_id is in: the tenant for generic webhooks (each tenant names its
    -- own events), '' where the sender is one account (Stripe, Shopify app, Lago, platform).
    scope        text NOT NULL DEFAULT '',
    body_sha256  bytea NOT NULL CHECK (length(body_sha256) = 32),
    tenant_id    text,
    sent_at      timestamptz,  -- when the sender says it sent it, if it says
    received_at  timestamptz NOT NULL DEFAULT now(),
    body         bytea NOT NULL,  -- exactly as received (the signed bytes)
    -- received: being handled (or its handler died: taken over after a minute);
    -- started / signalled / duplicate (its workflow existed): what the trigger did;
    -- no_trigger: acknowledged, nothing to start; failed: not handled, the sender's retry takes it over.
    outcome      text NOT NULL
                 CHECK (outcome IN ('received', 'started', 'signalled', 'duplicate', 'no_trigger', 'failed')),
    workflow_id  text,
    run_id       text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_inbox_event_id ON webhook_inbox (source, scope, event_type, event_id)
    WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX webhook_inbox_body ON webhook_inbox (source, scope, event_type, body_sha256);
CREATE INDEX webhook_inbox_received_at ON webhook_inbox (received_at);
