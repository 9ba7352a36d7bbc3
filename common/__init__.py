"""Plumbing shared by every idlegrid service: config, logging, errors, the gRPC
server bootstrap, clients, and the database."""
