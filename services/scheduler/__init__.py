"""The scheduler: routes each job to a node, reserves, dispatches, meters."""
