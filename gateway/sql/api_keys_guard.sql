-- A revoked key stays revoked; key material never changes; an expiry may
-- be brought forward, never pushed back or removed.
CREATE OR REPLACE FUNCTION gateway.api_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'api key % is revoked for good', OLD.key_id;
    END IF;
    IF NEW.secret_sha256 <> OLD.secret_sha256 OR NEW.scope <> OLD.scope
       OR NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.provider_id IS DISTINCT FROM OLD.provider_id THEN
        RAISE EXCEPTION 'api key % cannot change; create a new one', OLD.key_id;
    END IF;
    IF OLD.expires_at IS NOT NULL AND (NEW.expires_at IS NULL OR NEW.expires_at > OLD.expires_at) THEN
        RAISE EXCEPTION 'api key % cannot live longer than it was made to', OLD.key_id;
    END IF;
    RETURN NEW;
END $$;
