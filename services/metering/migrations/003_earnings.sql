-- Earnings are held until they can be trusted (metering/earning_states.py):
-- each settled job's provider share is HELD on the ledger until its release
-- time, then RELEASED, unless its node's earnings are voided first (VOIDED:
-- refunded to the partner). And the spot-checker's verdict per job.
--   earning: 0 none, 1 HELD, 2 RELEASED, 3 VOIDED, 4 POSTED (no window)
--   check_result: 0 not checked, 1 passed, 2 failed
ALTER TABLE metering.usage
  ADD COLUMN earnings_hold_s     integer  NOT NULL DEFAULT 0 CHECK (earnings_hold_s >= 0),
  ADD COLUMN earning             smallint NOT NULL DEFAULT 0 CHECK (earning BETWEEN 0 AND 4),
  ADD COLUMN earning_release_at  timestamptz,
  ADD COLUMN earning_resolved_at timestamptz,
  ADD COLUMN earning_note        text     NOT NULL DEFAULT '',
  ADD COLUMN check_result        smallint NOT NULL DEFAULT 0 CHECK (check_result BETWEEN 0 AND 2),
  ADD COLUMN check_detail        text     NOT NULL DEFAULT '',
  ADD COLUMN checked_at          timestamptz;

-- Records settled before earnings were held were paid at once.
UPDATE metering.usage SET earning = 4 WHERE settlement = 2 AND provider_micros > 0;

ALTER TABLE metering.usage
  -- a provider share exists exactly when a record is SETTLED with one
  ADD CONSTRAINT usage_earning_when_paid CHECK ((earning <> 0) = (settlement = 2 AND provider_micros > 0)),
  -- a window, from HELD on; a resolution time exactly when RELEASED or VOIDED
  ADD CONSTRAINT usage_earning_release_at CHECK ((earning IN (1, 2, 3)) = (earning_release_at IS NOT NULL)),
  ADD CONSTRAINT usage_earning_resolved_at CHECK ((earning IN (2, 3)) = (earning_resolved_at IS NOT NULL)),
  ADD CONSTRAINT usage_checked_at CHECK ((check_result <> 0) = (checked_at IS NOT NULL));

-- The earnings worker's queues: held earnings by release time, and by node.
CREATE INDEX usage_held_due ON metering.usage (earning_release_at) WHERE earning = 1;
CREATE INDEX usage_held_node ON metering.usage (node_id, recorded_at) WHERE earning = 1;

-- Nodes whose earnings are voided: every held earning of a job recorded up to
-- voided_through is voided and refunded, never released. Written when the
-- registry reports the node SUSPENDED (kept up to date while it stays so) or
-- when an operator decides (VoidNodeEarnings).
CREATE TABLE metering.earning_voids (
  node_id         text        PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
  voided_through  timestamptz NOT NULL,
  reason          text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 1024),
  source          text        NOT NULL CHECK (source IN ('registry', 'operator')),
  updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
