-- One usage record per job; the record is also the settlement outbox entry
-- (settlement = 1 pending) so recording and queueing are one atomic write.
CREATE TABLE metering.usage (
  job_id                  uuid PRIMARY KEY,
  consumer_account_id     uuid     NOT NULL,
  provider_account_id     uuid,
  provider_id             text     NOT NULL DEFAULT '',
  node_id                 text     NOT NULL DEFAULT '',
  model                   text     NOT NULL,
  prompt_tokens           bigint   NOT NULL CHECK (prompt_tokens >= 0),
  completion_tokens       bigint   NOT NULL CHECK (completion_tokens >= 0),
  node_prompt_tokens      bigint   NOT NULL CHECK (node_prompt_tokens >= 0),
  node_completion_tokens  bigint   NOT NULL CHECK (node_completion_tokens >= 0),
  requests                bigint   NOT NULL CHECK (requests >= 0),
  duration_ms             bigint   NOT NULL CHECK (duration_ms >= 0),
  price_input_per_mtok    bigint   NOT NULL CHECK (price_input_per_mtok >= 0),
  price_output_per_mtok   bigint   NOT NULL CHECK (price_output_per_mtok >= 0),
  price_per_request       bigint   NOT NULL CHECK (price_per_request >= 0),
  cost_micros             bigint   NOT NULL CHECK (cost_micros >= 0),
  fee_bps                 integer  NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
  outcome                 smallint NOT NULL CHECK (outcome BETWEEN 1 AND 3),
  started_at              timestamptz NOT NULL,
  finished_at             timestamptz NOT NULL,
  recorded_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
  settlement              smallint NOT NULL DEFAULT 1 CHECK (settlement BETWEEN 1 AND 5),
  fee_micros              bigint   NOT NULL DEFAULT 0,
  provider_micros         bigint   NOT NULL DEFAULT 0,
  settlement_error        text     NOT NULL DEFAULT '',
  settled_at              timestamptz,
  attempts                integer  NOT NULL DEFAULT 0,
  next_attempt_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  CHECK (outcome <> 3 OR cost_micros = 0),
  CHECK (cost_micros = 0 OR provider_account_id IS NOT NULL),
  CHECK (settlement <> 2 OR fee_micros + provider_micros = cost_micros)
);
CREATE INDEX usage_outbox ON metering.usage (next_attempt_at) WHERE settlement = 1;
CREATE INDEX usage_consumer ON metering.usage (consumer_account_id, finished_at DESC, job_id DESC);
CREATE INDEX usage_provider ON metering.usage (provider_account_id, finished_at DESC, job_id DESC);
CREATE INDEX usage_node ON metering.usage (node_id, finished_at DESC);
CREATE INDEX usage_model ON metering.usage (model, finished_at DESC);
CREATE INDEX usage_finished ON metering.usage (finished_at DESC, job_id DESC);
