"""The idlegrid credit ledger: double-entry accounts and immutable transfers
with TigerBeetle's semantics on PostgreSQL, group-committed."""
