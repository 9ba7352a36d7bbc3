-- Every change to a key (revocation included, from any client) tells every
-- gateway replica to drop it from its cache, when the change commits.
CREATE OR REPLACE FUNCTION gateway.api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('idlegrid_gateway_keys', COALESCE(NEW.key_id, OLD.key_id));
    RETURN NULL;
END $$;
