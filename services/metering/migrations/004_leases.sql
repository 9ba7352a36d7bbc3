-- Credit leases (metering/leases.py) and the usage records reserved on them.
--
-- A record reserved on a lease carries its lease and its exact cost in
-- pico-credits (cost_micros is then its ceiling, for display); it is cleared
-- with its lease (window_id, aggregate_id: set by clearing), never settled on
-- its own, so the per-job settlement outbox leaves it out.
ALTER TABLE metering.usage
  ADD COLUMN lease_id      uuid,
  ADD COLUMN cost_picos    bigint NOT NULL DEFAULT 0 CHECK (cost_picos >= 0),
  ADD COLUMN window_id     uuid,
  ADD COLUMN aggregate_id  uuid,
  ADD CONSTRAINT usage_lease_cost_is_exact CHECK (
    (lease_id IS NULL AND cost_picos = 0)
    OR cost_micros = cost_picos / 1000000 + (cost_picos % 1000000 <> 0)::int),
  ADD CONSTRAINT usage_cleared_only_on_lease CHECK (
    lease_id IS NOT NULL OR (window_id IS NULL AND aggregate_id IS NULL));

DROP INDEX metering.usage_outbox;
CREATE INDEX usage_outbox ON metering.usage (next_attempt_at) WHERE settlement = 1 AND lease_id IS NULL;
CREATE INDEX usage_lease ON metering.usage (lease_id) WHERE lease_id IS NOT NULL;

-- One row per lease, written before the ledger is asked for the hold, so
-- that every hold the ledger grants is known here and cleared.
--   state: 1 OPENING (recorded, the ledger asked or about to be), 2 OPEN (held),
--          3 CLOSED (no more jobs; `jobs` reserved on it), 4 CLEARED (posted
--          for its records), 5 REFUSED (nothing held), 6 VOIDED (released whole)
CREATE TABLE metering.leases (
  lease_id             uuid        PRIMARY KEY,
  consumer_account_id  uuid        NOT NULL,
  replica_id           uuid        NOT NULL,
  amount_min           bigint      NOT NULL CHECK (amount_min >= 1),
  amount_max           bigint      NOT NULL CHECK (amount_max >= amount_min),
  amount               bigint      NOT NULL DEFAULT 0 CHECK (amount BETWEEN 0 AND amount_max),
  use_until            timestamptz NOT NULL,
  max_job_s            integer     NOT NULL CHECK (max_job_s BETWEEN 1 AND 600),
  state                smallint    NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 6),
  jobs                 bigint      CHECK (jobs >= 0),
  available            bigint      NOT NULL DEFAULT 0 CHECK (available >= 0),
  held_elsewhere       bigint      NOT NULL DEFAULT 0 CHECK (held_elsewhere >= 0),
  note                 text        NOT NULL DEFAULT '',
  created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
  opened_at            timestamptz,
  closed_at            timestamptz,
  cleared_at           timestamptz,
  -- held exactly when the ledger granted it
  CONSTRAINT leases_amount_when_held CHECK ((state IN (2, 3, 4)) = (amount >= amount_min) OR state = 6),
  CONSTRAINT leases_refused_holds_nothing CHECK (state <> 5 OR amount = 0),
  CONSTRAINT leases_jobs_when_closed CHECK (state <> 3 OR jobs IS NOT NULL),
  CONSTRAINT leases_closed_at CHECK ((state = 3) <= (closed_at IS NOT NULL)),
  CONSTRAINT leases_cleared_at CHECK ((state IN (4, 6)) = (cleared_at IS NOT NULL))
);
-- Clearing's queue: the leases not yet cleared.
CREATE INDEX leases_unsettled ON metering.leases (state, use_until) WHERE state IN (1, 2, 3);
CREATE INDEX leases_consumer ON metering.leases (consumer_account_id, created_at DESC);
