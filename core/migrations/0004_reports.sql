-- Reports written by workflows (the Digital Presence Audit first; SEO health later), and
-- Lago usage events for every LLM call, offline ones included.

-- One report per workflow and kind: a retried store activity finds the row it wrote.
CREATE TABLE reports (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    workflow_id text NOT NULL,
    subject     text NOT NULL,            -- what was reported on (a website URL, ...)
    offline     boolean NOT NULL,         -- produced by the offline provider: not real content
    score       integer,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, kind)
);
CREATE INDEX reports_tenant_kind_created ON reports (tenant_id, kind, created_at DESC);

-- Offline calls are reported to Lago as well (zero cost, marked offline): a fresh install
-- shows the usage events it would bill.
DROP INDEX llm_usage_unreported;
CREATE INDEX llm_usage_unreported ON llm_usage (id) WHERE reported_to_lago_at IS NULL;
