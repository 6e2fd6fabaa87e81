-- Shopify webhooks find their tenant by shop domain (api/webhooks.py): without an index every
-- delivery scans every tenant.
CREATE INDEX tenants_shopify_shop_domain ON tenants (lower(settings->>'shopify_shop_domain'))
    WHERE settings ? 'shopify_shop_domain';
