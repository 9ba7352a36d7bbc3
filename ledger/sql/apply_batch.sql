-- Writes one committed batch in a single round trip. The writer has already
-- locked the chain head and the accounts (ledger.prepare_batch), and computed
-- every value; this function only stores them (the CHECKs and triggers still
-- apply). Statements with nothing to write are skipped: a reservation touches
-- no failed ids and closes no hold.
CREATE OR REPLACE FUNCTION ledger.apply_batch(
  batch bigint, prev_hash bytea, hash bytea, committed_at timestamptz,
  transfers ledger.new_transfer[],
  accounts ledger.account_balances[],
  holds_opened ledger.open_hold[],
  holds_closed uuid[],
  failed ledger.failed_id[],
  totals ledger.totals_delta[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  n integer := cardinality(transfers);
BEGIN
  IF n > 0 THEN
    INSERT INTO ledger.batches (batch, first_seq, last_seq, prev_hash, hash, committed_at)
    VALUES (apply_batch.batch, (transfers[1]).seq, (transfers[n]).seq, apply_batch.prev_hash,
            apply_batch.hash, apply_batch.committed_at);
    INSERT INTO ledger.transfers (seq, id, debit_account_id, credit_account_id, amount, pending_id,
        user_data, timeout_s, ledger, code, flags, batch, created_at,
        dr_debits_pending, dr_debits_posted, dr_credits_pending, dr_credits_posted,
        cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted)
    SELECT t.seq, t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id,
           t.user_data, t.timeout_s, t.ledger, t.code, t.flags, apply_batch.batch, apply_batch.committed_at,
           t.dr_debits_pending, t.dr_debits_posted, t.dr_credits_pending, t.dr_credits_posted,
           t.cr_debits_pending, t.cr_debits_posted, t.cr_credits_pending, t.cr_credits_posted
      FROM unnest(transfers) AS t;
    UPDATE ledger.chain_head
       SET batch = apply_batch.batch, last_seq = (transfers[n]).seq, hash = apply_batch.hash;
  END IF;
  IF cardinality(accounts) > 0 THEN
    UPDATE ledger.accounts a SET debits_pending = u.debits_pending, debits_posted = u.debits_posted,
           credits_pending = u.credits_pending, credits_posted = u.credits_posted
      FROM unnest(accounts) AS u
     WHERE a.id = u.id;
  END IF;
  IF cardinality(holds_opened) > 0 THEN
    INSERT INTO ledger.open_holds (pending_id, expires_at)
    SELECT h.pending_id, h.expires_at FROM unnest(holds_opened) AS h;
  END IF;
  IF cardinality(holds_closed) > 0 THEN
    DELETE FROM ledger.open_holds WHERE pending_id = ANY(holds_closed);
  END IF;
  IF cardinality(failed) > 0 THEN
    INSERT INTO ledger.failed_transfers (id, result) SELECT f.id, f.result FROM unnest(failed) AS f
      ON CONFLICT DO NOTHING;
  END IF;
  IF cardinality(totals) = 0 THEN
    RETURN;
  END IF;
  INSERT INTO ledger.totals AS t (ledger, debits_pending, debits_posted, credits_pending, credits_posted)
  SELECT d.ledger, d.debits_pending, d.debits_posted, d.credits_pending, d.credits_posted
    FROM unnest(totals) AS d
  ON CONFLICT (ledger) DO UPDATE SET
    debits_pending = t.debits_pending + EXCLUDED.debits_pending,
    debits_posted = t.debits_posted + EXCLUDED.debits_posted,
    credits_pending = t.credits_pending + EXCLUDED.credits_pending,
    credits_posted = t.credits_posted + EXCLUDED.credits_posted;
END $$;
