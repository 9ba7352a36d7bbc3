-- The audit trail is append-only: rows are never changed or removed.
CREATE OR REPLACE FUNCTION gateway.audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'gateway.audit is append-only (% refused)', TG_OP;
END $$;
