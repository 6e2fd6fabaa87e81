-- Per-tenant settings, one row per tenant and capability, typed by the capability's declared
-- settings Struct (workflows/capability.py). A row holds only what the tenant changed from the
-- declared defaults; a tenant without a row gets the defaults. Written only by the
-- TenantSettings workflow's activity (audited); read by activities/tenants.py:tenant_settings.
CREATE TABLE tenant_settings (
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    capability   text NOT NULL CHECK (capability ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
    updated_by   text NOT NULL DEFAULT 'system',
    workflow_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, capability)
);

-- The keys tenants.settings held, moved under their capability.
INSERT INTO tenant_settings (tenant_id, capability, settings, updated_by)
SELECT id, 'campaign', jsonb_build_object('budget_cap_usd', settings->'campaign_budget_cap_usd'), 'migration'
  FROM tenants
 WHERE settings ? 'campaign_budget_cap_usd' AND jsonb_typeof(settings->'campaign_budget_cap_usd') <> 'null';

INSERT INTO tenant_settings (tenant_id, capability, settings, updated_by)
SELECT id, 'order',
       (SELECT COALESCE(jsonb_object_agg(k, v), '{}'::jsonb)
          FROM jsonb_each(jsonb_build_object(
                 'review_threshold', settings->'order_review_threshold',
                 'inventory', settings->'inventory',
                 'out_of_stock_skus', settings->'out_of_stock_skus',
                 'shopify_shop_domain', settings->'shopify_shop_domain')) AS e(k, v)
         WHERE jsonb_typeof(v) <> 'null'),
       'migration'
  FROM tenants
 WHERE settings ?| ARRAY['order_review_threshold', 'inventory', 'out_of_stock_skus', 'shopify_shop_domain'];

UPDATE tenants
   SET settings = settings - 'campaign_budget_cap_usd' - 'order_review_threshold' - 'inventory'
                           - 'out_of_stock_skus' - 'shopify_shop_domain',
       updated_at = now()
 WHERE settings ?| ARRAY['campaign_budget_cap_usd', 'order_review_threshold', 'inventory', 'out_of_stock_skus',
                         'shopify_shop_domain'];

-- A Shopify shop belongs to one tenant (0023): the webhook finds its tenant by this unique index.
DROP INDEX IF EXISTS tenants_shopify_shop_domain_unique;
CREATE UNIQUE INDEX tenant_settings_shopify_shop_domain ON tenant_settings (lower(settings->>'shopify_shop_domain'))
    WHERE capability = 'order' AND settings ? 'shopify_shop_domain';
