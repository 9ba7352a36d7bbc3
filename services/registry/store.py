"""The registry's SQL: providers, node registrations, batched state changes,
and loading the live view back at start-up."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from idlegrid.common.errors import AlreadyExists
from idlegrid.registry import states
from idlegrid.registry.records import LiveNode, Provider, Verification
from idlegrid.registry.v1 import registry_pb2 as pb

KIND_NAMES = {pb.MODEL_KIND_LLM: "llm", pb.MODEL_KIND_TENSOR: "tensor"}
KIND_BY_NAME = {v: k for k, v in KIND_NAMES.items()}


def _u(b: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=b)


def _t(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(slots=True, frozen=True)
class Change:
    """One state change as it must be written, captured when it happened."""

    node_id: bytes
    state: int
    reason: int
    detail: str
    at: float
    revoke_token: bool = False
    # Set on → READY: per (name, version), (verified, canary latency µs).
    verification: tuple[tuple[str, str, bool, int], ...] = ()


@dataclass(slots=True, frozen=True)
class Registration:
    """A node (re-)registration: the whole row, its models and the event."""

    node_id: bytes
    provider_id: bytes
    token_digest: bytes
    endpoint: str
    region: str
    labels: str          # JSON
    gpus: str            # JSON
    cpu_cores: int
    memory_bytes: int
    agent_version: str
    registered_at: float
    offers: tuple[pb.ModelOffer, ...]
    endpoint_host: str = ""
    # The state it registers into: JOINING, or SUSPENDED (a suspended node, or
    # a node of a suspended provider) with its reason and detail.
    state: int = states.JOINING
    reason: int = pb.STATE_REASON_REGISTERED
    detail: str = ""

    @classmethod
    def of(cls, node: LiveNode) -> Registration:
        assert node.token_digest is not None
        hw = node.hardware
        return cls(
            node_id=node.id, provider_id=node.provider.id, token_digest=node.token_digest,
            endpoint=node.endpoint, region=node.region, labels=json.dumps(node.labels, sort_keys=True),
            gpus=json.dumps([{"name": g.name, "memory_bytes": g.memory_bytes, "count": g.count} for g in hw.gpus]),
            cpu_cores=hw.cpu_cores, memory_bytes=hw.memory_bytes, agent_version=node.agent_version,
            registered_at=node.registered_at, offers=tuple(node.offers), endpoint_host=node.endpoint_host,
            state=node.state, reason=node.reason, detail=node.detail,
        )


async def insert_provider(pool: asyncpg.Pool, p: Provider) -> None:
    assert p.token_digest is not None
    try:
        await pool.execute(
            "INSERT INTO registry.providers (id, name, ledger_account_id, token_sha256, created_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            _u(p.id), p.name, _u(p.ledger_account_id), p.token_digest, _t(p.created_at))
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"a provider named {p.name!r} exists") from None


async def write_registrations(conn: asyncpg.Connection, items: list[Registration]) -> None:
    """Upserts the nodes (JOINING, or SUSPENDED), replaces their models, records the events."""
    ids = [_u(r.node_id) for r in items]
    names = [states.NAMES[r.state] for r in items]
    reasons = [states.REASON_NAMES[r.reason] for r in items]
    details = [r.detail for r in items]
    await conn.execute(
        """
        INSERT INTO registry.nodes AS n (id, provider_id, token_sha256, endpoint, region, labels, gpus,
            cpu_cores, memory_bytes, agent_version, state, reason, detail, registered_at, state_changed_at,
            endpoint_host)
        SELECT u.id, u.provider_id, u.token, u.endpoint, u.region, u.labels::jsonb, u.gpus::jsonb,
               u.cpu_cores, u.memory_bytes, u.agent_version, u.state, u.reason, u.detail, u.at, u.at, u.host
        FROM unnest($1::uuid[], $2::uuid[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::int[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::timestamptz[],
                    $14::text[], $15::text[])
             AS u(id, provider_id, token, endpoint, region, labels, gpus, cpu_cores, memory_bytes,
                  agent_version, state, reason, at, detail, host)
        ON CONFLICT (id) DO UPDATE SET
            token_sha256 = excluded.token_sha256, endpoint = excluded.endpoint, region = excluded.region,
            labels = excluded.labels, gpus = excluded.gpus, cpu_cores = excluded.cpu_cores,
            memory_bytes = excluded.memory_bytes, agent_version = excluded.agent_version,
            state = excluded.state, reason = excluded.reason, detail = excluded.detail,
            registered_at = excluded.registered_at, state_changed_at = excluded.state_changed_at,
            endpoint_host = excluded.endpoint_host
        WHERE n.provider_id = excluded.provider_id
        """,
        ids, [_u(r.provider_id) for r in items], [r.token_digest for r in items],
        [r.endpoint for r in items], [r.region for r in items], [r.labels for r in items],
        [r.gpus for r in items], [r.cpu_cores for r in items], [r.memory_bytes for r in items],
        [r.agent_version for r in items], names, reasons, [_t(r.registered_at) for r in items], details,
        [r.endpoint_host for r in items],
    )
    await conn.execute("DELETE FROM registry.node_models WHERE node_id = ANY($1::uuid[])", ids)
    cols: dict[str, list] = {k: [] for k in ("id", "pos", "name", "version", "kind", "mbs", "ctx", "digest",
                                             "pin", "pout", "preq")}
    for r in items:
        for pos, o in enumerate(r.offers):
            for k, v in (("id", _u(r.node_id)), ("pos", pos), ("name", o.name), ("version", o.version),
                         ("kind", KIND_NAMES[o.kind]), ("mbs", o.max_batch_size), ("ctx", o.context_length),
                         ("digest", o.weights_digest), ("pin", o.price.per_million_input_tokens),
                         ("pout", o.price.per_million_output_tokens), ("preq", o.price.per_request)):
                cols[k].append(v)
    await conn.execute(
        """
        INSERT INTO registry.node_models (node_id, position, name, version, kind, max_batch_size,
            context_length, weights_digest, price_per_million_input, price_per_million_output, price_per_request)
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
                             $8::text[], $9::bigint[], $10::bigint[], $11::bigint[])
        """,
        *cols.values(),
    )
    await conn.execute(
        "INSERT INTO registry.node_events (node_id, at, state, reason, detail)"
        " SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[])",
        ids, [_t(r.registered_at) for r in items], names, reasons, details)


async def write_changes(conn: asyncpg.Connection, items: list[Change]) -> None:
    """Applies state changes in order: every one goes to the history; each
    node's row takes its last one."""
    last: dict[bytes, Change] = {}
    for c in items:
        last[c.node_id] = c
    rows = list(last.values())
    await conn.execute(
        """
        UPDATE registry.nodes n SET state = u.state, reason = u.reason, detail = u.detail,
            state_changed_at = u.at, token_sha256 = CASE WHEN u.revoke THEN NULL ELSE n.token_sha256 END
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bool[])
             AS u(id, state, reason, detail, at, revoke)
        WHERE n.id = u.id
        """,
        [_u(c.node_id) for c in rows], [states.NAMES[c.state] for c in rows],
        [states.REASON_NAMES[c.reason] for c in rows], [c.detail for c in rows], [_t(c.at) for c in rows],
        [c.revoke_token for c in rows])
    await conn.execute(
        "INSERT INTO registry.node_events (node_id, at, state, reason, detail)"
        " SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[])",
        [_u(c.node_id) for c in items], [_t(c.at) for c in items], [states.NAMES[c.state] for c in items],
        [states.REASON_NAMES[c.reason] for c in items], [c.detail for c in items])
    ver = [(c.node_id, *v) for c in items for v in c.verification]
    if ver:
        await conn.execute(
            """
            UPDATE registry.node_models m SET verified = u.verified, canary_latency_us = u.latency
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::bigint[])
                 AS u(node_id, name, version, verified, latency)
            WHERE m.node_id = u.node_id AND m.name = u.name AND m.version = u.version
            """,
            [_u(v[0]) for v in ver], [v[1] for v in ver], [v[2] for v in ver], [v[3] for v in ver],
            [v[4] for v in ver])


async def load_providers(conn: asyncpg.Connection) -> list[Provider]:
    rows = await conn.fetch("SELECT * FROM registry.providers")
    return [Provider(id=r["id"].bytes, name=r["name"], ledger_account_id=r["ledger_account_id"].bytes,
                     token_digest=r["token_sha256"], created_at=r["created_at"].timestamp(), trusted=r["trusted"],
                     suspended=r["suspended"], suspended_reason=r["suspended_reason"],
                     under_review=r["under_review"]) for r in rows]


async def load_nodes(conn: asyncpg.Connection, providers: dict[bytes, Provider], *,
                     retention_s: int, node_id: bytes | None = None) -> list[LiveNode]:
    """Nodes not OFFLINE, or OFFLINE for less than ``retention_s`` (or the one
    node ``node_id``, whatever its state), with their models."""
    if node_id is None:
        rows = await conn.fetch(
            "SELECT * FROM registry.nodes WHERE state <> 'offline'"
            " OR state_changed_at > now() - make_interval(secs => $1)", float(retention_s))
    else:
        rows = await conn.fetch("SELECT * FROM registry.nodes WHERE id = $1", _u(node_id))
    models = await conn.fetch(
        "SELECT * FROM registry.node_models WHERE node_id = ANY($1::uuid[]) ORDER BY node_id, position",
        [r["id"] for r in rows])
    by_node: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for m in models:
        by_node.setdefault(m["node_id"], []).append(m)
    out = []
    for r in rows:
        offers, ver = [], {}
        for m in by_node.get(r["id"], []):
            offers.append(pb.ModelOffer(
                name=m["name"], version=m["version"], kind=KIND_BY_NAME[m["kind"]],
                max_batch_size=m["max_batch_size"], context_length=m["context_length"],
                weights_digest=m["weights_digest"],
                price=pb.Price(per_million_input_tokens=m["price_per_million_input"],
                               per_million_output_tokens=m["price_per_million_output"],
                               per_request=m["price_per_request"])))
            ver[(m["name"], m["version"])] = Verification(m["verified"], m["canary_latency_us"])
        hw = pb.Hardware(gpus=[pb.Gpu(**g) for g in json.loads(r["gpus"])], cpu_cores=r["cpu_cores"],
                         memory_bytes=r["memory_bytes"])
        out.append(LiveNode(
            id=r["id"].bytes, provider=providers[r["provider_id"].bytes], token_digest=r["token_sha256"],
            endpoint=r["endpoint"], hardware=hw, region=r["region"], labels=json.loads(r["labels"]),
            offers=offers, agent_version=r["agent_version"], registered_at=r["registered_at"].timestamp(),
            state=states.BY_NAME[r["state"]], reason=states.REASON_BY_NAME[r["reason"]], detail=r["detail"],
            state_changed_at=r["state_changed_at"].timestamp(), verification=ver,
            endpoint_host=r["endpoint_host"]))
    return out


async def node_owner(pool: asyncpg.Pool, node_id: bytes) -> bytes | None:
    """The provider of a node the live view no longer holds, if it exists."""
    v = await pool.fetchval("SELECT provider_id FROM registry.nodes WHERE id = $1", _u(node_id))
    return None if v is None else v.bytes
