-- The audit log is append-only, enforced here and not only by the code that writes it: an
-- UPDATE or DELETE of a row, or a TRUNCATE of the table, fails with an error that says so,
-- whoever sends it (an activity, the API, an operator's psql). Inserts (once per idempotency
-- key, ON CONFLICT DO NOTHING) are unaffected. Taking the guard off takes a migration (DROP
-- TRIGGER) by the table's owner, which leaves its own trace in schema_migrations.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed or deleted; write a new entry instead';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
