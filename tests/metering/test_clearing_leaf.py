"""Clearing has PostgreSQL hash each record's Merkle leaf next to the row
(clearing_store.LEAF_SQL); ``ledger verify`` recomputes every leaf in Python
(common/clearing.py). The two must agree on every record, edge cases of the
encoding included, or verify would flag honest windows."""

from __future__ import annotations

import random
import uuid

import asyncpg

from idlegrid.common.clearing import facts_of_row, leaf
from idlegrid.metering.clearing_store import LEAF_SQL

_COLUMNS = {
    "job_id": "uuid", "consumer_account_id": "uuid", "provider_account_id": "uuid", "lease_id": "uuid",
    "node_id": "text", "prompt_tokens": "bigint", "completion_tokens": "bigint", "requests": "bigint",
    "price_input_per_mtok": "bigint", "price_output_per_mtok": "bigint", "price_per_request": "bigint",
    "cost_picos": "bigint", "outcome": "smallint",
}
_NODES = ["", "n1", "f" * 32, "0123456789ABCDEFabcdef0123456789", "0123 4567" * 4, "g" * 32, "é" * 32,
          "a" * 31, "a" * 33, "node-7"]
_INTS = [0, 1, 7, 255, 256, 2**31, 2**32 + 5, 2**62, 2**63 - 1]


def _rows(n: int) -> list[dict]:
    rnd = random.Random(12)
    rows = []
    for i in range(n):
        def some_id(optional: bool):
            return None if optional and rnd.random() < 0.3 else uuid.UUID(bytes=rnd.randbytes(16))
        rows.append({
            "job_id": some_id(False), "consumer_account_id": some_id(False),
            "provider_account_id": some_id(True), "lease_id": some_id(True), "node_id": _NODES[i % len(_NODES)],
            **{c: rnd.choice(_INTS) for c in ("prompt_tokens", "completion_tokens", "requests",
                                              "price_input_per_mtok", "price_output_per_mtok", "price_per_request",
                                              "cost_picos")},
            "outcome": 1 + i % 3})
    return rows


async def test_the_databases_leaf_is_the_leaf_verify_recomputes(db_url):
    rows = _rows(400)
    unnest = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_COLUMNS.values(), start=1))
    conn = await asyncpg.connect(db_url)
    try:
        got = await conn.fetch(
            f"SELECT job_id, {LEAF_SQL} AS leaf FROM unnest({unnest}) AS t({', '.join(_COLUMNS)})",
            *[[r[c] for r in rows] for c in _COLUMNS])
    finally:
        await conn.close()
    by_job = {r["job_id"]: bytes(r["leaf"]) for r in got}
    for r in rows:
        assert by_job[r["job_id"]] == leaf(facts_of_row(r)), r
