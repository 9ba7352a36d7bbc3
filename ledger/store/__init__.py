"""All of the ledger's SQL, and nothing else: no other ledger module holds SQL
text or talks to the database.

- ``batches``: the writer's one round trip to load and lock a batch, its one
  round trip to write it (the functions in ledger/sql/), and the expiry sweep's read;
- ``reads``: lookups and the paged histories of an account;
- ``new_accounts``: account creation (idempotent by id);
- ``books``: the read-only snapshot that ``ledger verify`` audits;
- ``checkpoints``: the checkpointer's reads of the chain head and its copy of each checkpoint.

Every function takes a pool or a connection and returns plain values
(``idlegrid.ledger.values``).
"""
