"""The SQL of the trust parts: the catalog, banned hosts, providers' operator
flags and tokens, the operator actions (append-only) and spot-check verdicts.

An operator action is appended in the transaction of the change it records
where that change is in these tables; node state changes go through the
writer (writer.py) and follow their action's row."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from google.protobuf.json_format import MessageToDict, ParseDict

from idlegrid.registry.records import ts
from idlegrid.registry.reputation import REASONS_MAX, Reputation, reason_for
from idlegrid.registry.store import KIND_BY_NAME, KIND_NAMES
from idlegrid.registry.v1 import registry_pb2 as pb

CHECK_KINDS = {pb.CHECK_KIND_SPOT_CHECK: "spot_check", pb.CHECK_KIND_TOKEN_COUNT: "token_count"}
CHECK_KIND_BY_NAME = {v: k for k, v in CHECK_KINDS.items()}


def _u(b: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=b)


@dataclass(frozen=True, slots=True)
class Action:
    """One operator action as it is appended."""

    actor: str
    action: str
    target: str
    reason: str


async def append_action(conn: asyncpg.Connection | asyncpg.Pool, a: Action) -> int:
    return await conn.fetchval(
        "INSERT INTO registry.operator_actions (actor, action, target, reason) VALUES ($1, $2, $3, $4)"
        " RETURNING seq", a.actor, a.action, a.target, a.reason)


async def list_actions(pool: asyncpg.Pool, *, after_seq: int, limit: int) -> tuple[list[pb.OperatorAction], int]:
    """A page of actions after ``after_seq`` in append order, and the cursor
    of the next page (0: none)."""
    rows = await pool.fetch("SELECT * FROM registry.operator_actions WHERE seq > $1 ORDER BY seq LIMIT $2",
                            after_seq, limit + 1)
    page = [pb.OperatorAction(seq=r["seq"], actor=r["actor"], action=r["action"], target=r["target"],
                              reason=r["reason"], at=ts(r["at"].timestamp())) for r in rows[:limit]]
    return page, page[-1].seq if len(rows) > limit else 0


# ------------------------------------------------------------------ catalog

async def put_model(conn: asyncpg.Connection, m: pb.CatalogModel, at: datetime) -> None:
    canaries = json.dumps([MessageToDict(c, preserving_proto_field_name=True) for c in m.canaries])
    await conn.execute(
        """
        INSERT INTO registry.catalog (name, kind, tokenizer, weights_digest, context_length, canaries,
            max_per_million_input, max_per_million_output, max_per_request, updated_at, updated_by)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)
        ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, tokenizer = excluded.tokenizer,
            weights_digest = excluded.weights_digest, context_length = excluded.context_length,
            canaries = excluded.canaries, max_per_million_input = excluded.max_per_million_input,
            max_per_million_output = excluded.max_per_million_output, max_per_request = excluded.max_per_request,
            updated_at = excluded.updated_at, updated_by = excluded.updated_by
        """,
        m.name, KIND_NAMES[m.kind], m.tokenizer, m.weights_digest, m.context_length, canaries,
        m.max_price.per_million_input_tokens, m.max_price.per_million_output_tokens, m.max_price.per_request,
        at, m.updated_by)


async def remove_model(conn: asyncpg.Connection, name: str) -> bool:
    """Deletes the entry and unverifies every node's offer of it; False when absent."""
    if await conn.fetchval("DELETE FROM registry.catalog WHERE name = $1 RETURNING 1", name) is None:
        return False
    await conn.execute("UPDATE registry.node_models SET verified = false WHERE name = $1", name)
    return True


async def load_catalog(conn: asyncpg.Connection) -> list[pb.CatalogModel]:
    out = []
    for r in await conn.fetch("SELECT * FROM registry.catalog ORDER BY name"):
        out.append(pb.CatalogModel(
            name=r["name"], kind=KIND_BY_NAME[r["kind"]], tokenizer=r["tokenizer"],
            weights_digest=r["weights_digest"], context_length=r["context_length"],
            canaries=[ParseDict(c, pb.CatalogCanary()) for c in json.loads(r["canaries"])],
            max_price=pb.Price(per_million_input_tokens=r["max_per_million_input"],
                               per_million_output_tokens=r["max_per_million_output"],
                               per_request=r["max_per_request"]),
            updated_at=ts(r["updated_at"].timestamp()), updated_by=r["updated_by"]))
    return out


# ------------------------------------------------------------------ providers and hosts

async def set_provider_flags(conn: asyncpg.Connection, provider_id: bytes, **flags) -> None:
    """Sets some of trusted, suspended, suspended_reason, under_review."""
    assert flags and set(flags) <= {"trusted", "suspended", "suspended_reason", "under_review"}
    cols = list(flags)
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
    await conn.execute(f"UPDATE registry.providers SET {sets} WHERE id = $1",  # noqa: S608 - fixed names
                       _u(provider_id), *(flags[c] for c in cols))


async def set_provider_token(conn: asyncpg.Connection, provider_id: bytes, digest: bytes | None) -> None:
    """A new provider token digest, or None: revoked (and its nodes' tokens with it)."""
    await conn.execute("UPDATE registry.providers SET token_sha256 = $2 WHERE id = $1", _u(provider_id), digest)
    if digest is None:
        await conn.execute("UPDATE registry.nodes SET token_sha256 = NULL WHERE provider_id = $1",
                           _u(provider_id))


async def ban_host(conn: asyncpg.Connection, host: str, banned: bool, actor: str) -> None:
    if banned:
        await conn.execute("INSERT INTO registry.banned_hosts (host, banned_at, banned_by) VALUES"
                           " ($1, clock_timestamp(), $2) ON CONFLICT (host) DO NOTHING", host, actor)
    else:
        await conn.execute("DELETE FROM registry.banned_hosts WHERE host = $1", host)


async def load_banned(conn: asyncpg.Connection) -> set[str]:
    return {r["host"] for r in await conn.fetch("SELECT host FROM registry.banned_hosts")}


# ------------------------------------------------------------------ checks

async def insert_check(pool: asyncpg.Pool, r: pb.ReportCheckRequest) -> bool:
    """Records a verdict; False when (node, job, kind) was reported before."""
    done = await pool.fetchval(
        "INSERT INTO registry.node_checks (node_id, job_id, kind, passed, detail, checker_node_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
        _u(r.node_id), _u(r.job_id), CHECK_KINDS[r.kind], r.passed, r.detail,
        _u(r.checker_node_id) if r.checker_node_id else None)
    return done is not None


async def load_reputations(conn: asyncpg.Connection, node_ids: list[bytes]) -> dict[bytes, Reputation]:
    """Each node's reputation rebuilt from its recorded verdicts."""
    ids = [_u(n) for n in node_ids]
    out: dict[bytes, Reputation] = {}
    for r in await conn.fetch(
            "SELECT node_id, count(*) FILTER (WHERE kind = 'spot_check' AND passed) AS passed,"
            " count(*) FILTER (WHERE kind = 'spot_check' AND NOT passed) AS failed,"
            " count(*) FILTER (WHERE kind = 'token_count' AND NOT passed) AS disagreed"
            " FROM registry.node_checks WHERE node_id = ANY($1::uuid[]) GROUP BY node_id", ids):
        out[r["node_id"].bytes] = Reputation(checks_passed=r["passed"], checks_failed=r["failed"],
                                             count_disagreements=r["disagreed"])
    for r in await conn.fetch(
            "SELECT node_id, job_id, kind, detail FROM (SELECT *, row_number() OVER (PARTITION BY node_id"
            " ORDER BY at DESC, job_id) AS n FROM registry.node_checks WHERE node_id = ANY($1::uuid[])"
            " AND NOT passed) c WHERE n <= $2 ORDER BY node_id, at DESC, job_id", ids, REASONS_MAX):
        out[r["node_id"].bytes].reasons.append(
            reason_for(CHECK_KIND_BY_NAME[r["kind"]], False, r["job_id"].bytes, r["detail"]))
    return out
