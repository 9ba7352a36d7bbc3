-- Refuses any change to an append-only table (its triggers call this).
CREATE OR REPLACE FUNCTION registry.forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'registry.% is append-only', TG_TABLE_NAME;
END $$;
