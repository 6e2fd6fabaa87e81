-- Affiliates: agencies and people paid a commission on what the tenants they referred pay the
-- platform (Affiliate Payout Review, workflows/affiliate_payout.py). Written by the admin API
-- (PUT /v1/admin/affiliates/{id}, PUT/DELETE .../referrals/{tenant}) with audit entries; read by
-- the payout review's activities. An affiliate is paused, never deleted: its payouts stay.
CREATE TABLE affiliates (
    id                 text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email              text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    -- The Stripe connected account payouts are transferred to; none: its payouts are held.
    payout_account     text CHECK (payout_account ~ '^acct_[A-Za-z0-9]{1,64}$'),
    commission_percent numeric(5, 2) NOT NULL CHECK (commission_percent >= 0 AND commission_percent <= 100),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    updated_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Which affiliate referred a tenant (one at most). Invoices issued before referred_at earn nothing.
CREATE TABLE affiliate_referrals (
    tenant_id    text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE ON UPDATE CASCADE,
    affiliate_id text NOT NULL REFERENCES affiliates (id),
    referred_at  timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX affiliate_referrals_affiliate ON affiliate_referrals (affiliate_id);

-- One payout per review, affiliate and currency: approved by finance, then transferred.
CREATE TABLE affiliate_payouts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id  text NOT NULL,
    affiliate_id text NOT NULL REFERENCES affiliates (id),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    status       text NOT NULL CHECK (status IN ('approved', 'paid')),
    transfer_id  text,
    approved_by  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    paid_at      timestamptz,
    UNIQUE (workflow_id, affiliate_id, currency)
);
CREATE INDEX affiliate_payouts_affiliate ON affiliate_payouts (affiliate_id, id);

-- Each paid invoice of a referred tenant earns its commission once, whichever review pays it:
-- a second review of the same quarter, or of an overlapping one, finds it here and skips it.
CREATE TABLE affiliate_commissions (
    lago_invoice_id  text PRIMARY KEY,
    payout_id        bigint NOT NULL REFERENCES affiliate_payouts (id),
    affiliate_id     text NOT NULL,
    tenant_id        text NOT NULL,
    currency         text NOT NULL,
    invoice_cents    bigint NOT NULL,
    commission_cents bigint NOT NULL CHECK (commission_cents >= 0),
    issuing_date     date NOT NULL
);
CREATE INDEX affiliate_commissions_payout ON affiliate_commissions (payout_id);
