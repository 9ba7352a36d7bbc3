-- A usage record reserved on a lease is written once and never updated:
-- clearing no longer stamps each record (a wide row with seven indexes,
-- rewritten per record, cost more than recording it). What clearing decides
-- per record -- its window, its aggregate, its provider share -- goes to a
-- narrow table, one row per record; its settlement and earning states are
-- its window's and its aggregate's. metering.usage_lines is what a line item
-- reads: the record with those states, for lease and per-job records alike.
CREATE TABLE metering.usage_cleared (
  job_id           uuid   PRIMARY KEY,
  window_id        uuid   NOT NULL,
  aggregate_id     uuid,
  provider_micros  bigint NOT NULL CHECK (provider_micros >= 0)
);

-- Records cleared before: their window, aggregate and share move here.
INSERT INTO metering.usage_cleared (job_id, window_id, aggregate_id, provider_micros)
SELECT job_id, window_id, aggregate_id, provider_micros FROM metering.usage WHERE window_id IS NOT NULL;

DROP INDEX metering.usage_aggregate;
ALTER TABLE metering.usage
  DROP CONSTRAINT usage_cleared_only_on_lease,
  DROP CONSTRAINT usage_earning_when_paid,
  DROP COLUMN window_id,
  DROP COLUMN aggregate_id,
  -- a per-job record's share exists exactly when it is SETTLED with one (a
  -- lease record's states are its window's and aggregate's: see usage_lines)
  ADD CONSTRAINT usage_earning_when_paid CHECK (
    lease_id IS NOT NULL OR (earning <> 0) = (settlement = 2 AND provider_micros > 0));

-- A provider's earnings summary reads its aggregates.
CREATE INDEX clearing_aggregates_provider ON metering.clearing_aggregates (provider_account_id, node_id);

-- Every usage column, with the settlement and earning of a lease record
-- derived from its clearing: PENDING until its lease's window is stored, then
-- SETTLED (RELEASED when it cost nothing), its provider share from
-- usage_cleared and its earning (and release times) its aggregate's.
CREATE VIEW metering.usage_lines AS
SELECT u.job_id, u.consumer_account_id, u.provider_account_id, u.provider_id, u.node_id, u.model,
       u.prompt_tokens, u.completion_tokens, u.node_prompt_tokens, u.node_completion_tokens, u.requests,
       u.duration_ms, u.price_input_per_mtok, u.price_output_per_mtok, u.price_per_request, u.cost_micros,
       u.fee_bps, u.outcome, u.started_at, u.finished_at, u.recorded_at,
       CASE WHEN c.job_id IS NULL THEN u.settlement WHEN u.cost_micros > 0 THEN 2::smallint ELSE 3::smallint
       END AS settlement,
       CASE WHEN c.job_id IS NULL THEN u.fee_micros ELSE u.cost_micros - c.provider_micros END AS fee_micros,
       COALESCE(c.provider_micros, u.provider_micros) AS provider_micros,
       u.settlement_error,
       CASE WHEN c.job_id IS NULL THEN u.settled_at ELSE w.created_at END AS settled_at,
       u.attempts, u.next_attempt_at, u.earnings_hold_s,
       CASE WHEN c.job_id IS NULL THEN u.earning ELSE COALESCE(a.earning, 0::smallint) END AS earning,
       CASE WHEN c.job_id IS NULL THEN u.earning_release_at ELSE a.release_at END AS earning_release_at,
       CASE WHEN c.job_id IS NULL THEN u.earning_resolved_at ELSE a.resolved_at END AS earning_resolved_at,
       CASE WHEN c.job_id IS NULL THEN u.earning_note ELSE COALESCE(a.note, '') END AS earning_note,
       u.check_result, u.check_detail, u.checked_at, u.lease_id, u.cost_picos,
       c.window_id, c.aggregate_id
  FROM metering.usage u
  LEFT JOIN metering.usage_cleared c ON c.job_id = u.job_id
  LEFT JOIN metering.clearing_windows w ON w.window_id = c.window_id
  LEFT JOIN metering.clearing_aggregates a ON a.aggregate_id = c.aggregate_id;

-- Every index on the record is paid on every job (about a fifth of storing
-- one each). The filters by node and by model are an operator's, and narrow
-- a listing that is already bounded: by partner or provider (their indexes)
-- or by time (usage_finished, walked newest first). Their own indexes go.
DROP INDEX metering.usage_node;
DROP INDEX metering.usage_model;
