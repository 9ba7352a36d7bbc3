-- Batched clearing (metering/clearing.py): each window settles a set of
-- leases in one ledger call. Everything the call carries is stored here
-- first (state 1 STORED), then sent (ClearWindow, idempotent by window id),
-- then marked (2 CLEARED); a crash in between only sends the same window
-- again. Each row keeps the full 32-byte Merkle root of exactly its records;
-- the ledger's transfer carries its first 16 bytes.
-- A held aggregate's records (its release or void moves their earnings too).
CREATE INDEX usage_aggregate ON metering.usage (aggregate_id) WHERE aggregate_id IS NOT NULL;

CREATE TABLE metering.clearing_windows (
  window_id       uuid        PRIMARY KEY,
  state           smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),  -- 1 STORED, 2 CLEARED
  jobs            bigint      NOT NULL CHECK (jobs >= 0),
  charged_micros  bigint      NOT NULL CHECK (charged_micros >= 0),
  fee_micros      bigint      NOT NULL CHECK (fee_micros >= 0),
  root            bytea       NOT NULL CHECK (length(root) = 32),
  created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
  cleared_at      timestamptz,
  CHECK ((state = 2) = (cleared_at IS NOT NULL))
);
CREATE INDEX clearing_windows_stored ON metering.clearing_windows (created_at) WHERE state = 1;

-- One row per lease cleared: its charge (0: voided) and the root of its
-- records (the lease's own state is in metering.leases).
CREATE TABLE metering.clearing_leases (
  lease_id             uuid    PRIMARY KEY,
  window_id            uuid    NOT NULL REFERENCES metering.clearing_windows,
  consumer_account_id  uuid    NOT NULL,
  jobs                 bigint  NOT NULL CHECK (jobs >= 0),
  cost_picos           numeric NOT NULL CHECK (cost_picos >= 0),
  charged_micros       bigint  NOT NULL CHECK (charged_micros >= 0),
  root                 bytea   NOT NULL CHECK (length(root) = 32)
);
CREATE INDEX clearing_leases_window ON metering.clearing_leases (window_id);

-- Per (window, node): the provider's earnings, held (1 HELD) for the release
-- window and then 2 RELEASED, or 3 VOIDED with refunds to the partners who
-- paid; 4 POSTED when there is no release window (the states of
-- metering/earning_states.py).
CREATE TABLE metering.clearing_aggregates (
  aggregate_id         uuid        PRIMARY KEY,
  window_id            uuid        NOT NULL REFERENCES metering.clearing_windows,
  node_id              text        NOT NULL,
  provider_account_id  uuid        NOT NULL,
  fee_bps              integer     NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
  jobs                 bigint      NOT NULL CHECK (jobs > 0),
  cost_picos           numeric     NOT NULL CHECK (cost_picos > 0),
  amount_micros        bigint      NOT NULL CHECK (amount_micros > 0),
  root                 bytea       NOT NULL CHECK (length(root) = 32),
  recorded_from        timestamptz NOT NULL,
  earning              smallint    NOT NULL CHECK (earning IN (1, 2, 3, 4)),
  release_at           timestamptz,
  resolved_at          timestamptz,
  note                 text        NOT NULL DEFAULT '',
  CHECK ((earning IN (1, 2, 3)) = (release_at IS NOT NULL)),
  CHECK ((earning IN (2, 3)) = (resolved_at IS NOT NULL))
);
CREATE INDEX clearing_aggregates_window ON metering.clearing_aggregates (window_id);
CREATE INDEX clearing_aggregates_held_due ON metering.clearing_aggregates (release_at) WHERE earning = 1;
CREATE INDEX clearing_aggregates_held_node ON metering.clearing_aggregates (node_id, recorded_from) WHERE earning = 1;

-- A cleared record's earning is its aggregate's (even when its part of the
-- aggregate, distributed so that the parts sum exactly to it, is 0).
ALTER TABLE metering.usage
  DROP CONSTRAINT usage_earning_when_paid,
  ADD CONSTRAINT usage_earning_when_paid CHECK (
    (earning <> 0) = (settlement = 2 AND (provider_micros > 0 OR aggregate_id IS NOT NULL)));
