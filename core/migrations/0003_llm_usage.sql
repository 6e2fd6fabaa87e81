-- LLM usage per tenant, agent and workflow (reported to Lago), tenant AI budgets, and the
-- billing customer ids made at onboarding.

-- One row per LLM call: the idempotency key (workflow id + step) makes a retried activity
-- record the call once. cost_usd is estimated from the price table when the provider gives
-- none; offline rows (the deterministic offline provider) cost nothing and are not billed.
CREATE TABLE llm_usage (
    id                  bigserial PRIMARY KEY,
    idempotency_key     text NOT NULL UNIQUE,
    tenant_id           text NOT NULL,
    workflow_id         text,
    agent               text NOT NULL,
    model               text NOT NULL,
    provider            text NOT NULL,
    tokens_in           bigint NOT NULL CHECK (tokens_in >= 0),
    tokens_out          bigint NOT NULL CHECK (tokens_out >= 0),
    cost_usd            numeric(12, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    offline             boolean NOT NULL DEFAULT false,
    reported_to_lago_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
-- The monthly spend of a tenant (budget checks) and its usage pages.
CREATE INDEX llm_usage_tenant_created ON llm_usage (tenant_id, created_at);
-- What is still to be reported to Lago: small, since reported rows leave it.
CREATE INDEX llm_usage_unreported ON llm_usage (id)
    WHERE reported_to_lago_at IS NULL AND NOT offline;

-- A tenant's monthly AI budget in USD. No row: unlimited.
CREATE TABLE tenant_budgets (
    tenant_id             text PRIMARY KEY,
    monthly_ai_budget_usd numeric(12, 2) NOT NULL CHECK (monthly_ai_budget_usd >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The Stripe and Lago customers of a tenant, made once at onboarding.
CREATE TABLE billing_customers (
    tenant_id          text PRIMARY KEY,
    stripe_customer_id text UNIQUE,
    lago_customer_id   text UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
