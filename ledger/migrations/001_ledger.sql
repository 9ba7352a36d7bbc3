-- The ledger schema: accounts, immutable transfers, the hash chain.
-- Amounts are micro-credits in bigint; every balance is >= 0 and the balance
-- flags are enforced here as well as in the writer.

CREATE FUNCTION ledger.forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger.%: rows are append-only (% refused)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TABLE ledger.accounts (
  id               uuid PRIMARY KEY,
  ledger           integer  NOT NULL CHECK (ledger > 0),
  kind             smallint NOT NULL CHECK (kind BETWEEN 1 AND 5),
  flags            integer  NOT NULL CHECK (flags & ~3 = 0 AND flags <> 3),
  user_data        uuid,
  name             text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 128),
  debits_pending   bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
  debits_posted    bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
  credits_pending  bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
  credits_posted   bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
  created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT debits_must_not_exceed_credits
    CHECK (flags & 1 = 0 OR debits_pending + debits_posted <= credits_posted),
  CONSTRAINT credits_must_not_exceed_debits
    CHECK (flags & 2 = 0 OR credits_pending + credits_posted <= debits_posted),
  UNIQUE (ledger, name)
);

-- Only the four balances of an account ever change; accounts are never deleted.
CREATE FUNCTION ledger.account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.ledger <> OLD.ledger OR NEW.kind <> OLD.kind
     OR NEW.flags <> OLD.flags OR NEW.user_data IS DISTINCT FROM OLD.user_data
     OR NEW.name IS DISTINCT FROM OLD.name OR NEW.created_at <> OLD.created_at THEN
    RAISE EXCEPTION 'ledger.accounts: only balances may change (% refused)', TG_OP
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_guard BEFORE UPDATE OR DELETE ON ledger.accounts
  FOR EACH ROW EXECUTE FUNCTION ledger.account_guard();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON ledger.accounts
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();

-- One row per committed batch; each extends the hash chain.
CREATE TABLE ledger.batches (
  batch         bigint PRIMARY KEY CHECK (batch > 0),
  first_seq     bigint NOT NULL,
  last_seq      bigint NOT NULL CHECK (last_seq >= first_seq),
  prev_hash     bytea  NOT NULL CHECK (length(prev_hash) = 32),
  hash          bytea  NOT NULL CHECK (length(hash) = 32),
  committed_at  timestamptz NOT NULL
);

-- Transfers: immutable, in commit order (seq is gap-free from 1). Each row also
-- keeps both accounts' balances right after it (the balance history).
CREATE TABLE ledger.transfers (
  seq                 bigint PRIMARY KEY CHECK (seq > 0),
  id                  uuid    NOT NULL UNIQUE,
  debit_account_id    uuid    NOT NULL REFERENCES ledger.accounts (id),
  credit_account_id   uuid    NOT NULL REFERENCES ledger.accounts (id),
  amount              bigint  NOT NULL CHECK (amount >= 0),
  pending_id          uuid,
  user_data           uuid,
  timeout_s           integer NOT NULL CHECK (timeout_s >= 0),
  ledger              integer NOT NULL CHECK (ledger > 0),
  code                integer NOT NULL CHECK (code > 0),
  flags               integer NOT NULL CHECK (flags & ~31 = 0),
  batch               bigint  NOT NULL REFERENCES ledger.batches (batch),
  created_at          timestamptz NOT NULL,
  dr_debits_pending   bigint NOT NULL,
  dr_debits_posted    bigint NOT NULL,
  dr_credits_pending  bigint NOT NULL,
  dr_credits_posted   bigint NOT NULL,
  cr_debits_pending   bigint NOT NULL,
  cr_debits_posted    bigint NOT NULL,
  cr_credits_pending  bigint NOT NULL,
  cr_credits_posted   bigint NOT NULL,
  CHECK (debit_account_id <> credit_account_id),
  CHECK ((flags & 12 = 0) = (pending_id IS NULL))
);
-- A pending transfer is posted or voided at most once.
CREATE UNIQUE INDEX transfers_resolves ON ledger.transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_debit ON ledger.transfers (debit_account_id, seq);
CREATE INDEX transfers_credit ON ledger.transfers (credit_account_id, seq);

CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON ledger.transfers
  FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON ledger.transfers
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
CREATE TRIGGER batches_append_only BEFORE UPDATE OR DELETE ON ledger.batches
  FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE TRIGGER batches_no_truncate BEFORE TRUNCATE ON ledger.batches
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();

-- The head of the chain: a single row, locked by every writing transaction
-- first (this serializes commits, so seq and batch follow commit order).
CREATE TABLE ledger.chain_head (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  batch      bigint NOT NULL,
  last_seq   bigint NOT NULL,
  hash       bytea  NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO ledger.chain_head (batch, last_seq, hash) VALUES (0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Ids burned by a business rejection (exceeds_credits ...): never reusable.
CREATE TABLE ledger.failed_transfers (
  id          uuid PRIMARY KEY,
  result      smallint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER failed_append_only BEFORE UPDATE OR DELETE ON ledger.failed_transfers
  FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();

-- Working set of the expiry sweep: pending transfers not yet posted or voided.
CREATE TABLE ledger.open_holds (
  pending_id  uuid PRIMARY KEY,
  expires_at  timestamptz
);
CREATE INDEX open_holds_expiry ON ledger.open_holds (expires_at) WHERE expires_at IS NOT NULL;

-- Per-ledger totals, moved by every batch: the database itself refuses a batch
-- whose debits and credits differ.
CREATE TABLE ledger.totals (
  ledger           integer PRIMARY KEY,
  debits_pending   bigint NOT NULL DEFAULT 0,
  debits_posted    bigint NOT NULL DEFAULT 0,
  credits_pending  bigint NOT NULL DEFAULT 0,
  credits_posted   bigint NOT NULL DEFAULT 0,
  CONSTRAINT double_entry CHECK (debits_pending = credits_pending AND debits_posted = credits_posted)
);
