-- Issue 11 (trust): the platform's model catalog, operator controls with
-- their audit trail, the SUSPENDED node state, and spot-check verdicts.

-- SUSPENDED: by an operator or a failed spot check; only an operator lifts it.
ALTER TABLE registry.nodes DROP CONSTRAINT nodes_state_check;
ALTER TABLE registry.nodes ADD CONSTRAINT nodes_state_check
    CHECK (state IN ('joining', 'verifying', 'ready', 'paused', 'draining', 'offline', 'suspended'));
ALTER TABLE registry.node_events DROP CONSTRAINT node_events_state_check;
ALTER TABLE registry.node_events ADD CONSTRAINT node_events_state_check
    CHECK (state IN ('joining', 'verifying', 'ready', 'paused', 'draining', 'offline', 'suspended'));
-- The host a direct node registered with, as it named it (its endpoint holds
-- the pinned address): a ban of that name reaches the node.
ALTER TABLE registry.nodes ADD COLUMN endpoint_host text NOT NULL DEFAULT ''
    CHECK (length(endpoint_host) <= 255);

-- Operator flags of a provider; a revoked provider token is NULL until rotated.
ALTER TABLE registry.providers ADD COLUMN trusted boolean NOT NULL DEFAULT false;
ALTER TABLE registry.providers ADD COLUMN suspended boolean NOT NULL DEFAULT false;
ALTER TABLE registry.providers ADD COLUMN suspended_reason text NOT NULL DEFAULT ''
    CHECK (length(suspended_reason) <= 1024);
ALTER TABLE registry.providers ADD COLUMN under_review boolean NOT NULL DEFAULT false;
ALTER TABLE registry.providers ALTER COLUMN token_sha256 DROP NOT NULL;

-- The models the marketplace sells, with their reference canaries (a JSON
-- array of CatalogCanary objects) and the operator's price ceiling (0: none).
CREATE TABLE registry.catalog (
    name                 text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    kind                 text NOT NULL CHECK (kind IN ('llm', 'tensor')),
    tokenizer            text NOT NULL CHECK (length(tokenizer) <= 128),
    weights_digest       text NOT NULL CHECK (weights_digest = '' OR weights_digest ~ '^sha256:[0-9a-f]{64}$'),
    context_length       integer NOT NULL CHECK (context_length BETWEEN 0 AND 16777216),
    canaries             jsonb NOT NULL CHECK (jsonb_typeof(canaries) = 'array'
                                               AND jsonb_array_length(canaries) BETWEEN 1 AND 8),
    max_per_million_input   bigint NOT NULL CHECK (max_per_million_input BETWEEN 0 AND 1000000000000),
    max_per_million_output  bigint NOT NULL CHECK (max_per_million_output BETWEEN 0 AND 1000000000000),
    max_per_request         bigint NOT NULL CHECK (max_per_request BETWEEN 0 AND 1000000000000),
    updated_at           timestamptz NOT NULL,
    updated_by           text NOT NULL CHECK (length(updated_by) BETWEEN 1 AND 128),
    CHECK ((kind = 'llm' AND context_length > 0 AND tokenizer <> '' AND max_per_request = 0)
        OR (kind = 'tensor' AND context_length = 0 AND tokenizer = ''
            AND max_per_million_input = 0 AND max_per_million_output = 0))
);

-- Banned direct endpoint hosts (lower case; IP literals without brackets).
CREATE TABLE registry.banned_hosts (
    host       text PRIMARY KEY CHECK (length(host) BETWEEN 1 AND 255),
    banned_at  timestamptz NOT NULL,
    banned_by  text NOT NULL
);

-- Who did what to whom and why: every operator action, append-only.
CREATE TABLE registry.operator_actions (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor   text NOT NULL CHECK (length(actor) BETWEEN 1 AND 128),
    action  text NOT NULL CHECK (action ~ '^[a-z_]{1,64}$'),
    target  text NOT NULL CHECK (length(target) <= 255),
    reason  text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1024)
);
CREATE TRIGGER operator_actions_append_only BEFORE UPDATE OR DELETE ON registry.operator_actions
    FOR EACH ROW EXECUTE FUNCTION registry.forbid_change();

-- Spot-check verdicts and token-count disagreements, one per (node, job,
-- kind): a node's reputation is computed from them.
CREATE TABLE registry.node_checks (
    node_id          uuid NOT NULL REFERENCES registry.nodes (id) ON DELETE CASCADE,
    job_id           uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('spot_check', 'token_count')),
    passed           boolean NOT NULL,
    detail           text NOT NULL CHECK (length(detail) <= 1024),
    checker_node_id  uuid,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (node_id, job_id, kind)
);
CREATE TRIGGER node_checks_append_only BEFORE UPDATE ON registry.node_checks
    FOR EACH ROW EXECUTE FUNCTION registry.forbid_change();
