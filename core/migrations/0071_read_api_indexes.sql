-- The read APIs (api/reports.py, api/audit.py, api/usage.py) page newest first by id within a
-- tenant, and aggregate usage over a period across tenants.
CREATE INDEX reports_tenant_id_desc ON reports (tenant_id, id DESC);
CREATE INDEX audit_log_tenant_id_desc ON audit_log (tenant_id, id DESC);
CREATE INDEX audit_log_created ON audit_log (created_at);
CREATE INDEX llm_usage_created ON llm_usage (created_at);
