-- Orders processed by the OrderProcessing workflow (workflows/orders.py): one row per
-- workflow, written once by its last activity (idempotent on the workflow id).
CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    workflow_id  text NOT NULL UNIQUE,
    tenant_id    text NOT NULL,
    order_key    text NOT NULL,
    source       text NOT NULL,
    status       text NOT NULL CHECK (status IN ('accepted', 'rejected', 'out_of_stock', 'invalid')),
    total        numeric(14, 2) NOT NULL,
    currency     text NOT NULL,
    fraud_score  integer NOT NULL,
    reviewed     boolean NOT NULL DEFAULT false,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_tenant_created ON orders (tenant_id, created_at DESC);
