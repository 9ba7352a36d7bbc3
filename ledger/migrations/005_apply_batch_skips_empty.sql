-- The same writes as before; statements with nothing to write are skipped
-- (a reservation touches no failed ids and closes no hold): fewer statements
-- per group commit.
CREATE OR REPLACE FUNCTION ledger.apply_batch(
  p_batch bigint, p_prev_hash bytea, p_hash bytea, p_now timestamptz,
  t_seq bigint[], t_id uuid[], t_dr uuid[], t_cr uuid[], t_amount bigint[], t_pending uuid[],
  t_user_data uuid[], t_timeout bigint[], t_ledger bigint[], t_code bigint[], t_flags integer[],
  t_balances bigint[],            -- 8 per transfer, flattened
  a_id uuid[], a_dp bigint[], a_dpo bigint[], a_cp bigint[], a_cpo bigint[],
  h_open uuid[], h_expires timestamptz[], h_closed uuid[],
  f_id uuid[], f_result smallint[],
  g_ledger bigint[], g_dp numeric[], g_dpo numeric[], g_cp numeric[], g_cpo numeric[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  n integer := coalesce(array_length(t_seq, 1), 0);
BEGIN
  IF n > 0 THEN
    INSERT INTO ledger.batches (batch, first_seq, last_seq, prev_hash, hash, committed_at)
    VALUES (p_batch, t_seq[1], t_seq[n], p_prev_hash, p_hash, p_now);
    INSERT INTO ledger.transfers (seq, id, debit_account_id, credit_account_id, amount, pending_id,
        user_data, timeout_s, ledger, code, flags, batch, created_at,
        dr_debits_pending, dr_debits_posted, dr_credits_pending, dr_credits_posted,
        cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted)
    SELECT t_seq[i], t_id[i], t_dr[i], t_cr[i], t_amount[i], t_pending[i], t_user_data[i], t_timeout[i],
           t_ledger[i], t_code[i], t_flags[i], p_batch, p_now,
           t_balances[8*i-7], t_balances[8*i-6], t_balances[8*i-5], t_balances[8*i-4],
           t_balances[8*i-3], t_balances[8*i-2], t_balances[8*i-1], t_balances[8*i]
      FROM generate_subscripts(t_seq, 1) AS i;
    UPDATE ledger.chain_head SET batch = p_batch, last_seq = t_seq[n], hash = p_hash;
  END IF;
  IF cardinality(a_id) > 0 THEN
    UPDATE ledger.accounts a SET debits_pending = u.dp, debits_posted = u.dpo,
           credits_pending = u.cp, credits_posted = u.cpo
      FROM unnest(a_id, a_dp, a_dpo, a_cp, a_cpo) AS u(id, dp, dpo, cp, cpo)
     WHERE a.id = u.id;
  END IF;
  IF cardinality(h_open) > 0 THEN
    INSERT INTO ledger.open_holds (pending_id, expires_at) SELECT * FROM unnest(h_open, h_expires);
  END IF;
  IF cardinality(h_closed) > 0 THEN
    DELETE FROM ledger.open_holds WHERE pending_id = ANY(h_closed);
  END IF;
  IF cardinality(f_id) > 0 THEN
    INSERT INTO ledger.failed_transfers (id, result) SELECT * FROM unnest(f_id, f_result)
      ON CONFLICT DO NOTHING;
  END IF;
  IF cardinality(g_ledger) = 0 THEN
    RETURN;
  END IF;
  INSERT INTO ledger.totals AS t (ledger, debits_pending, debits_posted, credits_pending, credits_posted)
  SELECT * FROM unnest(g_ledger, g_dp, g_dpo, g_cp, g_cpo)
  ON CONFLICT (ledger) DO UPDATE SET
    debits_pending = t.debits_pending + EXCLUDED.debits_pending,
    debits_posted = t.debits_posted + EXCLUDED.debits_posted,
    credits_pending = t.credits_pending + EXCLUDED.credits_pending,
    credits_posted = t.credits_posted + EXCLUDED.credits_posted;
END $$;
