-- The gateway's own state: API keys (only a digest of each secret), the
-- accounts created through the admin API, and per-key rate-limit state.

CREATE TABLE gateway.api_keys (
    key_id         text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{32}$'),
    secret_sha256  bytea NOT NULL CHECK (length(secret_sha256) = 32),
    scope          text NOT NULL CHECK (scope IN ('consumer', 'provider', 'admin')),
    account_id     uuid,
    provider_id    uuid,
    -- Per-key rate limit; NULL = the gateway's default.
    rate_per_s     integer CHECK (rate_per_s IS NULL OR rate_per_s BETWEEN 0 AND 10000000),
    burst          integer CHECK (burst IS NULL OR burst BETWEEN 1 AND 100000000),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at     timestamptz,
    CHECK (scope = 'admin' OR account_id IS NOT NULL),
    CHECK (scope <> 'provider' OR provider_id IS NOT NULL)
);
CREATE INDEX api_keys_account ON gateway.api_keys (account_id);

-- A revoked key stays revoked; key material never changes.
CREATE TRIGGER api_keys_guard BEFORE UPDATE ON gateway.api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway.api_keys_guard();

-- Every change to a key (revocation included, from any client) tells every
-- gateway replica to drop it from its cache, when the change commits.
CREATE TRIGGER api_keys_notify AFTER UPDATE OR DELETE ON gateway.api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway.api_keys_notify();

-- Accounts created through POST /v1/admin/accounts. The row is written last:
-- it is the commit point of a creation that spans the ledger and the registry.
CREATE TABLE gateway.accounts (
    account_id   uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('consumer', 'provider')),
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.@+-]{1,100}$'),
    provider_id  uuid,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (kind, name),
    CHECK ((kind = 'provider') = (provider_id IS NOT NULL))
);

-- Rate limits, GCRA: per key the theoretical arrival time (epoch seconds) of
-- the next request. Shared by every replica: the limit is global. UNLOGGED:
-- a commit does not wait for the WAL (the row is hot: every request of the
-- key updates it), and after a crash the table is empty, which only forgets
-- recent use.
CREATE UNLOGGED TABLE gateway.rate_limits (
    key_id  text PRIMARY KEY REFERENCES gateway.api_keys (key_id) ON DELETE CASCADE,
    tat     double precision NOT NULL
);

-- Its GCRA step: gateway/sql/rate_take.sql.
