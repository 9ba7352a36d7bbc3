-- Admin money operations have limits, keys expire, admin actions are audited.

-- When a key stops working (NULL: never). Every admin key made from now on
-- has one (IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S); NOT VALID leaves keys made
-- before this migration as they were.
ALTER TABLE gateway.api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE gateway.api_keys ADD CONSTRAINT api_keys_admin_expires
    CHECK (scope <> 'admin' OR expires_at IS NOT NULL) NOT VALID;
ALTER TABLE gateway.api_keys ADD CONSTRAINT api_keys_expires_after_created
    CHECK (expires_at IS NULL OR expires_at > created_at);

-- Each admin top-up or payout, written (status 'pending') before the ledger
-- is asked, in the transaction that checks the caps, so that concurrent
-- calls on any replica cannot pass a cap together. Its status then says
-- what the ledger did. A pending row counts against the caps (it may have
-- been applied); a refused one does not.
CREATE TABLE gateway.admin_money (
    action           text NOT NULL CHECK (action IN ('topup', 'payout')),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    key_id           text NOT NULL CHECK (key_id ~ '^[0-9a-f]{32}$'),
    account_id       uuid NOT NULL,
    amount_micros    bigint NOT NULL CHECK (amount_micros > 0),
    day              date NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'applied', 'refused')),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (action, idempotency_key)
);
CREATE INDEX admin_money_day ON gateway.admin_money (action, day, key_id);

-- The audit trail: who (the admin key id, or 'cli' for a key made with
-- `idlegrid gateway create-admin-key`), when, what and with which result.
-- Append-only: a trigger refuses every UPDATE, DELETE and TRUNCATE.
CREATE TABLE gateway.audit (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor            text NOT NULL CHECK (actor = 'cli' OR actor ~ '^[0-9a-f]{32}$'),
    action           text NOT NULL CHECK (action IN ('create_account', 'create_key', 'revoke_key', 'topup',
                                                     'payout')),
    account_id       uuid,
    target_key_id    text CHECK (target_key_id IS NULL OR target_key_id ~ '^[0-9a-f]{32}$'),
    amount_micros    bigint CHECK (amount_micros IS NULL OR amount_micros > 0),
    idempotency_key  text CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 128),
    result           text NOT NULL CHECK (result IN ('started', 'ok', 'already_applied', 'refused', 'failed')),
    detail           text NOT NULL DEFAULT '' CHECK (length(detail) <= 500)
);

CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON gateway.audit
    FOR EACH ROW EXECUTE FUNCTION gateway.audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON gateway.audit
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.audit_append_only();
