"""Batched clearing, the rules every service shares: the exact cost of a
job, the one rounding per aggregate, and the Merkle root that ties a
settlement transfer to the exact set of usage records it settles.

Exact costs are integer pico-credits (1 micro-credit = 10^6 pico-credits):
a price in micro-credits per million tokens times a token count is
pico-credits, so no job is ever rounded on its own.

An aggregate (a lease's charge, a node's earnings in a window) rounds once:

    charged  = ceil(Σ cost_picos / 10^6)                         consumer side
    provider = floor(Σ cost_picos · (10^4 - fee_bps) / 10^4 / 10^6)  per node
    fee      = Σ charged - Σ provider                            per window

so the platform's fee is never lost to per-job flooring, and a partner is
never charged more than ceil of what the jobs exactly cost.

The Merkle root (RFC 6962 style: leaves and inner nodes hashed with
different prefixes, an odd node promoted) is over the records' canonical
bytes sorted by job id; a transfer carries its first 16 bytes in user_data,
and metering keeps the whole root. Changing, adding or dropping one record
changes the root.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

PICOS_PER_MICRO = 1_000_000
BPS_PER_UNIT = 10_000
PICOS_MAX = 2**63 - 1
ROOT_PREFIX_BYTES = 16  # what fits a transfer's user_data

_RECORD = struct.Struct(">16s16s16s16s16sQQQQQQQB")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def llm_cost_picos(price_in_per_mtok: int, price_out_per_mtok: int, prompt_tokens: int, completion_tokens: int) -> int:
    return price_in_per_mtok * prompt_tokens + price_out_per_mtok * completion_tokens


def request_cost_picos(price_per_request: int, requests: int) -> int:
    return price_per_request * requests * PICOS_PER_MICRO


def micros_ceil(picos: int) -> int:
    return -(-picos // PICOS_PER_MICRO)


def provider_micros(picos: int, fee_bps: int) -> int:
    """The provider's share of an aggregate, floored once."""
    return picos * (BPS_PER_UNIT - fee_bps) // (BPS_PER_UNIT * PICOS_PER_MICRO)


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What a usage record commits to: everything its cost and its payee
    depend on."""

    job_id: bytes
    consumer_account_id: bytes
    provider_account_id: bytes  # b"" for a job no node served
    node_id: bytes  # b"" likewise
    lease_id: bytes
    prompt_tokens: int
    completion_tokens: int
    requests: int
    price_in_per_mtok: int
    price_out_per_mtok: int
    price_per_request: int
    cost_picos: int
    outcome: int

    def canonical(self) -> bytes:
        return _RECORD.pack(
            self.job_id, self.consumer_account_id, self.provider_account_id.rjust(16, b"\0"),
            self.node_id.rjust(16, b"\0"), self.lease_id.rjust(16, b"\0"), self.prompt_tokens,
            self.completion_tokens, self.requests, self.price_in_per_mtok, self.price_out_per_mtok,
            self.price_per_request, self.cost_picos, self.outcome)


@functools.lru_cache(maxsize=4096)
def node_bytes(node_id: str) -> bytes:
    """A usage record's node (text: the hex of its 16-byte id) as the 16
    bytes a record's facts carry; another name, by its SHA-256."""
    if not node_id:
        return b""
    if _HEX32.fullmatch(node_id):
        return bytes.fromhex(node_id)
    return hashlib.sha256(node_id.encode()).digest()[:16]


def _uuid_bytes(v) -> bytes:
    return v.bytes if v is not None else b""


def facts_of_row(row) -> RecordFacts:
    """What a row of metering's usage table commits to (its column names):
    metering computes the roots from it, and ``ledger verify`` recomputes
    them from the same rows, so the two can never disagree on the encoding."""
    return RecordFacts(
        job_id=row["job_id"].bytes, consumer_account_id=row["consumer_account_id"].bytes,
        provider_account_id=_uuid_bytes(row["provider_account_id"]), node_id=node_bytes(row["node_id"]),
        lease_id=_uuid_bytes(row["lease_id"]), prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], requests=row["requests"],
        price_in_per_mtok=row["price_input_per_mtok"], price_out_per_mtok=row["price_output_per_mtok"],
        price_per_request=row["price_per_request"], cost_picos=int(row["cost_picos"]), outcome=row["outcome"])


def leaf(record: RecordFacts) -> bytes:
    return hashlib.sha256(b"\x00" + record.canonical()).digest()


def merkle_root(records: Iterable[RecordFacts]) -> bytes:
    """The root over ``records`` in job-id order (32 bytes); the empty set's
    root is SHA-256 of nothing."""
    return merkle_root_of_leaves([leaf(r) for r in sorted(records, key=lambda r: r.job_id)])


def merkle_root_of_leaves(leaves: list[bytes]) -> bytes:
    """``merkle_root`` from the records' leaves (``leaf``), already in job-id
    order: a caller rooting several subsets of one record set hashes each
    record once."""
    level = leaves
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root_prefix(root: bytes) -> bytes:
    """The part of a root that a transfer's 16-byte user_data carries."""
    return root[:ROOT_PREFIX_BYTES]


__all__ = [
    "PICOS_PER_MICRO",
    "RecordFacts",
    "facts_of_row",
    "llm_cost_picos",
    "merkle_root",
    "merkle_root_of_leaves",
    "micros_ceil",
    "node_bytes",
    "provider_micros",
    "request_cost_picos",
    "root_prefix",
]
