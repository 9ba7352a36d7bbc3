-- The registry's durable copy of its live view: providers, nodes, the models
-- each node offers, and the history of every node state change. The live
-- view in memory is authoritative while the registry runs; these tables let
-- it restart. Load (heartbeats) is soft state and is never written here.

CREATE TABLE registry.providers (
    id                uuid PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    ledger_account_id uuid NOT NULL CHECK (ledger_account_id <> '00000000-0000-0000-0000-000000000000'),
    token_sha256      bytea NOT NULL CHECK (length(token_sha256) = 32),
    created_at        timestamptz NOT NULL
);

CREATE TABLE registry.nodes (
    id                uuid PRIMARY KEY CHECK (id <> '00000000-0000-0000-0000-000000000000'),
    provider_id       uuid NOT NULL REFERENCES registry.providers (id),
    token_sha256      bytea CHECK (token_sha256 IS NULL OR length(token_sha256) = 32),
    endpoint          text NOT NULL CHECK (length(endpoint) BETWEEN 1 AND 255),
    region            text NOT NULL CHECK (length(region) <= 64),
    labels            jsonb NOT NULL,
    gpus              jsonb NOT NULL,
    cpu_cores         integer NOT NULL CHECK (cpu_cores BETWEEN 1 AND 4096),
    memory_bytes      bigint NOT NULL CHECK (memory_bytes > 0),
    agent_version     text NOT NULL,
    state             text NOT NULL CHECK (state IN ('joining', 'verifying', 'ready', 'draining', 'offline')),
    reason            text NOT NULL,
    detail            text NOT NULL,
    registered_at     timestamptz NOT NULL,
    state_changed_at  timestamptz NOT NULL,
    -- A deregistered node holds no token.
    CHECK (reason <> 'deregistered' OR token_sha256 IS NULL)
);
CREATE INDEX nodes_provider ON registry.nodes (provider_id);
CREATE INDEX nodes_live ON registry.nodes (state_changed_at) WHERE state <> 'offline';

CREATE TABLE registry.node_models (
    node_id                   uuid NOT NULL REFERENCES registry.nodes (id) ON DELETE CASCADE,
    position                  integer NOT NULL CHECK (position BETWEEN 0 AND 63),
    name                      text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    version                   text NOT NULL CHECK (version ~ '^[0-9]{0,19}$'),
    kind                      text NOT NULL CHECK (kind IN ('llm', 'tensor')),
    max_batch_size            integer NOT NULL CHECK (max_batch_size BETWEEN 0 AND 65536),
    context_length            integer NOT NULL CHECK (context_length BETWEEN 0 AND 16777216),
    weights_digest            text NOT NULL CHECK (weights_digest = '' OR weights_digest ~ '^sha256:[0-9a-f]{64}$'),
    price_per_million_input   bigint NOT NULL CHECK (price_per_million_input BETWEEN 0 AND 1000000000000),
    price_per_million_output  bigint NOT NULL CHECK (price_per_million_output BETWEEN 0 AND 1000000000000),
    price_per_request         bigint NOT NULL CHECK (price_per_request BETWEEN 0 AND 1000000000000),
    verified                  boolean NOT NULL DEFAULT false,
    canary_latency_us         bigint NOT NULL DEFAULT 0 CHECK (canary_latency_us >= 0),
    PRIMARY KEY (node_id, name, version),
    UNIQUE (node_id, position),
    -- Language models are priced per token and have a context; others per request.
    CHECK ((kind = 'llm' AND price_per_request = 0 AND context_length > 0)
        OR (kind = 'tensor' AND price_per_million_input = 0 AND price_per_million_output = 0
            AND context_length = 0))
);

CREATE TABLE registry.node_events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id    uuid NOT NULL REFERENCES registry.nodes (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL,
    state      text NOT NULL CHECK (state IN ('joining', 'verifying', 'ready', 'draining', 'offline')),
    reason     text NOT NULL,
    detail     text NOT NULL
);
CREATE INDEX node_events_node ON registry.node_events (node_id, seq);

-- History is append-only.
CREATE TRIGGER node_events_append_only BEFORE UPDATE ON registry.node_events
    FOR EACH ROW EXECUTE FUNCTION registry.forbid_change();
