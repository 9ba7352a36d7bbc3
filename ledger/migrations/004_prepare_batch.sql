-- Reads everything one batch needs in a single round trip, taking the locks in
-- the one global order every writer uses: the chain head first (which
-- serializes writers, so seq follows commit order), then the accounts by id.
-- Each statement of a VOLATILE function takes a fresh snapshot (READ
-- COMMITTED), so the reads after the head lock see every earlier commit.
--
-- Rows, by k: -1 the chain head (x = batch, y = last_seq, h = hash, ts = the
-- database clock); 4 a locked account (ledger, flags, x/y/z/w = balances);
-- 0 a transfer with one of p_ids; 1 a transfer resolving one of p_pendings;
-- 2 an open hold of p_pendings (ts = expires_at); 3 a burned id (code = result).
CREATE FUNCTION ledger.prepare_batch(p_ids uuid[], p_pendings uuid[], p_accounts uuid[])
RETURNS TABLE (k integer, id uuid, dr uuid, cr uuid, amount bigint, pending_id uuid, user_data uuid,
               timeout_s bigint, ledger bigint, code bigint, flags integer, ts timestamptz,
               x bigint, y bigint, z bigint, w bigint, h bytea)
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT -1, NULL::uuid, NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::uuid,
         NULL::bigint, NULL::bigint, NULL::bigint, NULL::integer, clock_timestamp(),
         c.batch, c.last_seq, NULL::bigint, NULL::bigint, c.hash
    FROM ledger.chain_head c FOR UPDATE;
  RETURN QUERY SELECT 4, a.id, NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::uuid,
         NULL::bigint, a.ledger, NULL::bigint, a.flags, NULL::timestamptz,
         a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, NULL::bytea
    FROM ledger.accounts a
   WHERE a.id = ANY(p_accounts)
      OR a.id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY(p_pendings)
                  UNION ALL
                  SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY(p_pendings))
   ORDER BY a.id FOR UPDATE;
  RETURN QUERY SELECT 0, t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data,
         t.timeout_s, t.ledger, t.code, t.flags, NULL::timestamptz, NULL::bigint, NULL::bigint,
         NULL::bigint, NULL::bigint, NULL::bytea
    FROM ledger.transfers t WHERE t.id = ANY(p_ids);
  RETURN QUERY SELECT 1, t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data,
         t.timeout_s, t.ledger, t.code, t.flags, NULL::timestamptz, NULL::bigint, NULL::bigint,
         NULL::bigint, NULL::bigint, NULL::bytea
    FROM ledger.transfers t WHERE t.pending_id = ANY(p_pendings);
  RETURN QUERY SELECT 2, o.pending_id, NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::uuid,
         NULL::bigint, NULL::bigint, NULL::bigint, NULL::integer, o.expires_at, NULL::bigint, NULL::bigint,
         NULL::bigint, NULL::bigint, NULL::bytea
    FROM ledger.open_holds o WHERE o.pending_id = ANY(p_pendings);
  RETURN QUERY SELECT 3, f.id, NULL::uuid, NULL::uuid, NULL::bigint, NULL::uuid, NULL::uuid,
         NULL::bigint, NULL::bigint, f.result::bigint, NULL::integer, NULL::timestamptz, NULL::bigint,
         NULL::bigint, NULL::bigint, NULL::bigint, NULL::bytea
    FROM ledger.failed_transfers f WHERE f.id = ANY(p_ids);
END $$;
