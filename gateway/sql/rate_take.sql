-- Takes up to p_want requests from the key's allowance at once (a replica
-- leases a few and spends them locally): (granted, 0) when at least one is
-- granted, else (0, seconds until the next one would be). The same as one
-- GCRA check per request when p_want = 1.
CREATE OR REPLACE FUNCTION gateway.rate_take(p_key text, p_interval_s double precision, p_burst integer, p_want integer,
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
