"""The provider node: the agent that registers a node's Triton with the
registry, heartbeats its load and drains it (``idlegrid node start``), and
the demo Triton (``demo/``)."""
