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
CREATE FUNCTION gateway.api_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'api key % is revoked for good', OLD.key_id;
    END IF;
    IF NEW.secret_sha256 <> OLD.secret_sha256 OR NEW.scope <> OLD.scope
       OR NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.provider_id IS DISTINCT FROM OLD.provider_id THEN
        RAISE EXCEPTION 'api key % cannot change; create a new one', OLD.key_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER api_keys_guard BEFORE UPDATE ON gateway.api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway.api_keys_guard();

-- Every change to a key (revocation included, from any client) tells every
-- gateway replica to drop it from its cache, when the change commits.
CREATE FUNCTION gateway.api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('idlegrid_gateway_keys', COALESCE(NEW.key_id, OLD.key_id));
    RETURN NULL;
END $$;
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

-- Takes up to p_want requests from the key's allowance at once (a replica
-- leases a few and spends them locally): (granted, 0) when at least one is
-- granted, else (0, seconds until the next one would be). The same as one
-- GCRA check per request when p_want = 1.
CREATE FUNCTION gateway.rate_take(p_key text, p_interval_s double precision, p_burst integer, p_want integer,
                                  OUT granted integer, OUT wait_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    now_s double precision := extract(epoch FROM clock_timestamp());
    t double precision;
BEGIN
    INSERT INTO gateway.rate_limits (key_id, tat) VALUES (p_key, now_s) ON CONFLICT (key_id) DO NOTHING;
    SELECT greatest(tat, now_s) INTO t FROM gateway.rate_limits WHERE key_id = p_key FOR UPDATE;
    granted := least(p_want, floor((now_s + p_burst * p_interval_s - t) / p_interval_s + 1e-9)::integer);
    IF granted < 1 THEN
        granted := 0;
        wait_s := greatest(t + p_interval_s - p_burst * p_interval_s - now_s, 0.001);
        RETURN;
    END IF;
    UPDATE gateway.rate_limits SET tat = t + granted * p_interval_s WHERE key_id = p_key;
    wait_s := 0;
END $$;
