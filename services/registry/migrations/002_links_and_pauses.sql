-- Issue 10: linked nodes have no endpoint (the marketplace reaches them only
-- through their relay link), and a node may be PAUSED while its owner uses
-- the GPU. Links are not stored: after a restart agents register and link
-- again.
ALTER TABLE registry.nodes DROP CONSTRAINT nodes_endpoint_check;
ALTER TABLE registry.nodes ADD CONSTRAINT nodes_endpoint_check CHECK (length(endpoint) <= 255);

ALTER TABLE registry.nodes DROP CONSTRAINT nodes_state_check;
ALTER TABLE registry.nodes ADD CONSTRAINT nodes_state_check
    CHECK (state IN ('joining', 'verifying', 'ready', 'paused', 'draining', 'offline'));

ALTER TABLE registry.node_events DROP CONSTRAINT node_events_state_check;
ALTER TABLE registry.node_events ADD CONSTRAINT node_events_state_check
    CHECK (state IN ('joining', 'verifying', 'ready', 'paused', 'draining', 'offline'));
