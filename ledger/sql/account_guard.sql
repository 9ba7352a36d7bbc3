-- Only the four balances of an account ever change; accounts are never deleted.
CREATE OR REPLACE FUNCTION ledger.account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.ledger <> OLD.ledger OR NEW.kind <> OLD.kind
     OR NEW.flags <> OLD.flags OR NEW.user_data IS DISTINCT FROM OLD.user_data
     OR NEW.name IS DISTINCT FROM OLD.name OR NEW.created_at <> OLD.created_at THEN
    RAISE EXCEPTION 'ledger.accounts: only balances may change (% refused)', TG_OP
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
