-- A copy of the signed checkpoints of the chain head, for convenience (the
-- service writes it after the log). The authority is the checkpoint log
-- outside the database, checked with a public key the database never holds:
-- ``ledger verify`` never trusts this table.
CREATE TABLE ledger.checkpoints (
  n          bigint PRIMARY KEY CHECK (n > 0),
  batch      bigint NOT NULL CHECK (batch >= 0),
  last_seq   bigint NOT NULL CHECK (last_seq >= 0),
  hash       bytea  NOT NULL CHECK (length(hash) = 32),
  signed_at  timestamptz NOT NULL,
  key_id     text   NOT NULL CHECK (length(key_id) = 16),
  signature  bytea  NOT NULL CHECK (length(signature) = 64)
);
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger.checkpoints
  FOR EACH ROW EXECUTE FUNCTION ledger.forbid_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON ledger.checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_change();
