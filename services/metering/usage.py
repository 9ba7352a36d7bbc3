"""Usage records: validation and conversion between proto and SQL rows.

A record reserved on a credit lease (``lease_id`` set) carries its exact cost
in pico-credits, and ``cost_micros`` is its ceiling (for display only: the
lease is charged once, rounded over all its records; see common/clearing.py).
A record without a lease is a per-job record, settled on its own."""

from __future__ import annotations

from datetime import UTC as _UTC
from datetime import datetime, timedelta

from asyncpg.pgproto import pgproto
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.clearing import PICOS_MAX, PICOS_PER_MICRO
from idlegrid.common.errors import InvalidArgument
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.metering.v1 import metering_pb2 as pb

NAME_LEN_MAX = 128
TOKENS_MAX = 10**12

# Input columns, in order (the record's fields of the same names), and their SQL types.
SQL_TYPES = {
    "job_id": "uuid", "consumer_account_id": "uuid", "provider_account_id": "uuid", "provider_id": "text",
    "node_id": "text", "model": "text", "prompt_tokens": "bigint", "completion_tokens": "bigint",
    "node_prompt_tokens": "bigint", "node_completion_tokens": "bigint", "requests": "bigint",
    "duration_ms": "bigint", "price_input_per_mtok": "bigint", "price_output_per_mtok": "bigint",
    "price_per_request": "bigint", "cost_micros": "bigint", "fee_bps": "integer", "outcome": "smallint",
    "started_at": "timestamptz", "finished_at": "timestamptz", "earnings_hold_s": "integer",
    "lease_id": "uuid", "cost_picos": "bigint",
}
COLUMNS = tuple(SQL_TYPES)
LEASE_AT = COLUMNS.index("lease_id")
_SET_BY_METERING = ("fee_bps", "earnings_hold_s")  # its policies, not the caller's record
_INT_FIELDS = COLUMNS[6:16]
_OUTCOMES = frozenset({pb.OUTCOME_COMPLETED, pb.OUTCOME_PARTIAL, pb.OUTCOME_FAILED})


_UUID = pgproto.UUID
_ZERO_ID = bytes(16)
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_SECONDS_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z


def _id(b: bytes, what: str, *, optional: bool = False):
    if optional and not b:
        return None
    if len(b) != 16 or b == _ZERO_ID:
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")
    return _UUID(b)


def _time(ts: Timestamp, what: str) -> datetime:
    """Timestamp -> datetime (microseconds), faster than ToDatetime; checked."""
    seconds, nanos = ts.seconds, ts.nanos
    if not (0 <= seconds <= _SECONDS_MAX and 0 <= nanos < 1_000_000_000):
        raise InvalidArgument(f"{what} is out of range")
    return _EPOCH + timedelta(0, seconds, nanos // 1000)  # positional: cheaper than keywords


def _cached_id(ids: dict, b: bytes, what: str, *, optional: bool = False):
    """``_id``, remembered in ``ids`` (the accounts and leases a batch repeats)."""
    v = ids.get(b)
    if v is None:
        v = ids[b] = _id(b, what, optional=optional)
    return v


def validate(r: pb.UsageRecord, fee_bps: int, earnings_hold_s: int = 0, ids: dict | None = None) -> tuple:
    """The row to insert for ``r`` under metering's fee and release window;
    raises InvalidArgument on bad input. (On every job's path: attribute
    reads once each, no generic conversions; ``ids``: a batch's cache of
    converted account and lease ids.)"""
    provider_id, node_id, model = r.provider_id, r.node_id, r.model
    if len(provider_id) > NAME_LEN_MAX or len(node_id) > NAME_LEN_MAX or len(model) > NAME_LEN_MAX:
        for name in ("provider_id", "node_id", "model"):
            if len(getattr(r, name)) > NAME_LEN_MAX:
                raise InvalidArgument(f"{name} is longer than {NAME_LEN_MAX} characters")
    if not model:
        raise InvalidArgument("model is required")
    ints = (r.prompt_tokens, r.completion_tokens, r.node_prompt_tokens, r.node_completion_tokens, r.requests,
            r.duration_ms, r.price_input_per_mtok, r.price_output_per_mtok, r.price_per_request, r.cost_micros)
    if max(ints[:4]) > TOKENS_MAX or max(ints[4:]) > AMOUNT_MAX:
        for name, v in zip(_INT_FIELDS, ints, strict=True):
            if v > (TOKENS_MAX if "tokens" in name else AMOUNT_MAX):
                raise InvalidArgument(f"{name} is out of range")
    cost_micros, outcome, cost_picos, lease = ints[-1], r.outcome, r.cost_picos, r.lease_id
    if outcome not in _OUTCOMES:
        raise InvalidArgument("outcome must be completed, partial or failed")
    if outcome == pb.OUTCOME_FAILED and cost_micros:
        raise InvalidArgument("a failed job costs nothing")
    if cost_micros and not r.provider_account_id:
        raise InvalidArgument("provider_account_id is required when there is a cost")
    if not r.HasField("started_at") or not r.HasField("finished_at"):
        raise InvalidArgument("started_at and finished_at are required")
    if r.window_id or r.aggregate_id:
        raise InvalidArgument("window_id and aggregate_id are set by metering")
    if cost_picos > PICOS_MAX:
        raise InvalidArgument("cost_picos is out of range")
    if (lease or cost_picos) and cost_micros != -(-cost_picos // PICOS_PER_MICRO):
        raise InvalidArgument("cost_micros must be the ceiling of cost_picos / 10^6")
    started, finished = _time(r.started_at, "started_at"), _time(r.finished_at, "finished_at")
    if finished < started:
        raise InvalidArgument("finished_at is before started_at")
    if ids is None:
        ids = {}
    return (
        _id(r.job_id, "job_id"), _cached_id(ids, r.consumer_account_id, "consumer_account_id"),
        _cached_id(ids, r.provider_account_id, "provider_account_id", optional=True) if r.provider_account_id
        else None,
        provider_id, node_id, model, *ints, fee_bps, outcome, started, finished, earnings_hold_s,
        _cached_id(ids, lease, "lease_id") if lease else None, cost_picos,
    )


def validate_batch(records, fee_bps: int, earnings_hold_s: int, records_max: int) -> list[tuple]:
    """Every record's row, or InvalidArgument naming the first bad one (then
    nothing is written)."""
    if not 1 <= len(records) <= records_max:
        raise InvalidArgument(f"records must hold 1..{records_max} records")
    rows, seen, ids = [], set(), {}
    for i, r in enumerate(records):
        try:
            row = validate(r, fee_bps, earnings_hold_s, ids)
        except InvalidArgument as e:
            raise InvalidArgument(f"records[{i}]: {e.message}") from None
        if r.job_id in seen:
            raise InvalidArgument(f"records[{i}]: job_id appears twice in the batch")
        seen.add(r.job_id)
        rows.append(row)
    return rows


def _ts(dt) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _b(v) -> bytes:
    return v.bytes if v is not None else b""


def to_pb(row) -> pb.UsageRecord:
    return pb.UsageRecord(
        job_id=row["job_id"].bytes, consumer_account_id=row["consumer_account_id"].bytes,
        provider_account_id=_b(row["provider_account_id"]),
        provider_id=row["provider_id"], node_id=row["node_id"], model=row["model"],
        **{n: row[n] for n in _INT_FIELDS}, fee_bps=row["fee_bps"], outcome=row["outcome"],
        started_at=_ts(row["started_at"]), finished_at=_ts(row["finished_at"]),
        settlement=row["settlement"], fee_micros=row["fee_micros"], provider_micros=row["provider_micros"],
        settlement_error=row["settlement_error"], settled_at=_ts(row["settled_at"]),
        earning=row["earning"], earnings_hold_s=row["earnings_hold_s"],
        earning_release_at=_ts(row["earning_release_at"]), earning_resolved_at=_ts(row["earning_resolved_at"]),
        earning_note=row["earning_note"], check_result=row["check_result"], check_detail=row["check_detail"],
        checked_at=_ts(row["checked_at"]), lease_id=_b(row["lease_id"]), cost_picos=row["cost_picos"],
        # a row just inserted (RETURNING) has no clearing columns: those are metering.usage_lines'
        window_id=_b(row.get("window_id")), aggregate_id=_b(row.get("aggregate_id")),
    )


def _plain(v):
    return v.bytes if hasattr(v, "bytes") else v


def same(row, values: tuple) -> bool:
    """Whether a stored row records the same usage as ``values``."""
    return all(
        _plain(row[c]) == _plain(v)
        for c, v in zip(COLUMNS, values, strict=True)
        if c not in _SET_BY_METERING
    )
