-- Reads everything one batch needs in a single round trip, taking the locks in
-- the one global order every writer uses: the chain head first (which
-- serializes writers, so seq follows commit order), then the accounts by id.
-- Each statement of a VOLATILE function takes a fresh snapshot (READ
-- COMMITTED), so the reads after the head lock see every earlier commit.
--
-- One row: the chain head and the database clock, then one array per kind of
-- row: the accounts named (directly, or as the sides of a pending transfer),
-- the transfers with one of transfer_ids, the transfers resolving one of
-- pending_ids, the open holds of pending_ids, and the burned transfer_ids.
CREATE OR REPLACE FUNCTION ledger.prepare_batch(
  transfer_ids uuid[], pending_ids uuid[], account_ids uuid[],
  OUT head_batch bigint, OUT head_last_seq bigint, OUT head_hash bytea, OUT db_now timestamptz,
  OUT accounts ledger.account_state[], OUT transfers ledger.transfer_fields[],
  OUT resolutions ledger.resolution[], OUT open_holds ledger.open_hold[], OUT failed ledger.failed_id[]
) LANGUAGE plpgsql AS $$
BEGIN
  SELECT c.batch, c.last_seq, c.hash, clock_timestamp()
    INTO head_batch, head_last_seq, head_hash, db_now
    FROM ledger.chain_head c FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'ledger.chain_head is missing' USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  accounts := ARRAY(
    SELECT ROW(a.id, a.ledger, a.flags, a.debits_pending, a.debits_posted, a.credits_pending,
               a.credits_posted)::ledger.account_state
      FROM ledger.accounts a
     WHERE a.id = ANY(account_ids)
        OR a.id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY(pending_ids)
                    UNION ALL
                    SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY(pending_ids))
     ORDER BY a.id FOR UPDATE);
  transfers := ARRAY(
    SELECT ROW(t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data,
               t.timeout_s, t.ledger, t.code, t.flags)::ledger.transfer_fields
      FROM ledger.transfers t WHERE t.id = ANY(transfer_ids));
  resolutions := ARRAY(
    SELECT ROW(t.pending_id, t.flags)::ledger.resolution
      FROM ledger.transfers t WHERE t.pending_id = ANY(pending_ids));
  open_holds := ARRAY(
    SELECT ROW(o.pending_id, o.expires_at)::ledger.open_hold
      FROM ledger.open_holds o WHERE o.pending_id = ANY(pending_ids));
  failed := ARRAY(
    SELECT ROW(f.id, f.result)::ledger.failed_id
      FROM ledger.failed_transfers f WHERE f.id = ANY(transfer_ids));
END $$;
