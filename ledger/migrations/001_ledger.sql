-- The ledger schema: accounts, immutable transfers, the hash chain, and the
-- row types of the batch functions. Schema only: the functions live in
-- ledger/sql/, one canonical file each (the triggers below call
-- forbid_change and account_guard, which are applied before this file).
-- Amounts are micro-credits in bigint; every balance is >= 0 and the balance
-- flags are enforced here as well as in the writer. The proto's uint32 fields
-- (ledger, code, timeout_s) get bigint columns, so every value the API
-- accepts can be stored.

CREATE TABLE ledger.accounts (
  id               uuid PRIMARY KEY,
  ledger           bigint   NOT NULL CHECK (ledger > 0),
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
  timeout_s           bigint  NOT NULL CHECK (timeout_s >= 0),
  ledger              bigint  NOT NULL CHECK (ledger > 0),
  code                bigint  NOT NULL CHECK (code > 0),
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
CREATE TRIGGER failed_no_truncate BEFORE TRUNCATE ON ledger.failed_transfers
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();

-- Working set of the expiry sweep: pending transfers not yet posted or voided.
CREATE TABLE ledger.open_holds (
  pending_id  uuid PRIMARY KEY,
  expires_at  timestamptz
);
CREATE INDEX open_holds_expiry ON ledger.open_holds (expires_at) WHERE expires_at IS NOT NULL;

-- Per-ledger totals, moved by every batch: the database itself refuses a batch
-- whose debits and credits differ. numeric, since a ledger's summed balances
-- may pass 2^63-1 while each account's cannot.
CREATE TABLE ledger.totals (
  ledger           bigint PRIMARY KEY,
  debits_pending   numeric NOT NULL DEFAULT 0,
  debits_posted    numeric NOT NULL DEFAULT 0,
  credits_pending  numeric NOT NULL DEFAULT 0,
  credits_posted   numeric NOT NULL DEFAULT 0,
  CONSTRAINT double_entry CHECK (debits_pending = credits_pending AND debits_posted = credits_posted)
);

-- The rows that ledger.prepare_batch reads and ledger.apply_batch writes, one
-- type per kind of row, with the columns' own names.

-- An account as a batch loads (and locks) it.
CREATE TYPE ledger.account_state AS (
  id uuid, ledger bigint, flags integer,
  debits_pending bigint, debits_posted bigint, credits_pending bigint, credits_posted bigint
);
-- An account's four balances after a batch.
CREATE TYPE ledger.account_balances AS (
  id uuid, debits_pending bigint, debits_posted bigint, credits_pending bigint, credits_posted bigint
);
-- A stored transfer's own fields (no seq, batch or balance history).
CREATE TYPE ledger.transfer_fields AS (
  id uuid, debit_account_id uuid, credit_account_id uuid, amount bigint, pending_id uuid,
  user_data uuid, timeout_s bigint, ledger bigint, code bigint, flags integer
);
-- The transfer that resolved (posted, voided or expired) a pending one.
CREATE TYPE ledger.resolution AS (pending_id uuid, flags integer);
-- A row of ledger.open_holds.
CREATE TYPE ledger.open_hold AS (pending_id uuid, expires_at timestamptz);
-- An id burned by a business rejection, and the result that burned it.
CREATE TYPE ledger.failed_id AS (id uuid, result smallint);
-- A transfer a batch creates: its fields, its seq, and both accounts'
-- balances right after it (the columns of ledger.transfers but batch and created_at).
CREATE TYPE ledger.new_transfer AS (
  seq bigint, id uuid, debit_account_id uuid, credit_account_id uuid, amount bigint, pending_id uuid,
  user_data uuid, timeout_s bigint, ledger bigint, code bigint, flags integer,
  dr_debits_pending bigint, dr_debits_posted bigint, dr_credits_pending bigint, dr_credits_posted bigint,
  cr_debits_pending bigint, cr_debits_posted bigint, cr_credits_pending bigint, cr_credits_posted bigint
);
-- What a batch adds to one ledger's totals.
CREATE TYPE ledger.totals_delta AS (
  ledger bigint, debits_pending numeric, debits_posted numeric, credits_pending numeric, credits_posted numeric
);
