"""The node registry: providers, nodes, their hardware and priced models, the
node lifecycle (an explicit state machine), verification of each node's
Triton, leases, and the WatchNodes stream that schedulers follow."""
