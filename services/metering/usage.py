"""Usage records: validation and conversion between proto and SQL rows."""

from __future__ import annotations

from datetime import UTC as _UTC

from asyncpg.pgproto import pgproto
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.metering.v1 import metering_pb2 as pb

NAME_LEN_MAX = 128
TOKENS_MAX = 10**12

# Input columns, in order (the record's fields of the same names).
COLUMNS = (
    "job_id", "consumer_account_id", "provider_account_id", "provider_id", "node_id", "model",
    "prompt_tokens", "completion_tokens", "node_prompt_tokens", "node_completion_tokens", "requests",
    "duration_ms", "price_input_per_mtok", "price_output_per_mtok", "price_per_request", "cost_micros",
    "fee_bps", "outcome", "started_at", "finished_at", "earnings_hold_s",
)
_SET_BY_METERING = ("fee_bps", "earnings_hold_s")  # its policies, not the caller's record
_INT_FIELDS = COLUMNS[6:16]


def _id(b: bytes, what: str, *, optional: bool = False):
    if optional and not b:
        return None
    if len(b) != 16 or b == bytes(16):
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")
    return pgproto.UUID(b)


def validate(r: pb.UsageRecord, fee_bps: int, earnings_hold_s: int = 0) -> tuple:
    """The row to insert for ``r`` under metering's fee and release window;
    raises InvalidArgument on bad input."""
    for name in ("provider_id", "node_id", "model"):
        if len(getattr(r, name)) > NAME_LEN_MAX:
            raise InvalidArgument(f"{name} is longer than {NAME_LEN_MAX} characters")
    if not r.model:
        raise InvalidArgument("model is required")
    for name in _INT_FIELDS:
        v = getattr(r, name)
        if v > (TOKENS_MAX if "tokens" in name else AMOUNT_MAX):
            raise InvalidArgument(f"{name} is out of range")
    if r.outcome not in (pb.OUTCOME_COMPLETED, pb.OUTCOME_PARTIAL, pb.OUTCOME_FAILED):
        raise InvalidArgument("outcome must be completed, partial or failed")
    if r.outcome == pb.OUTCOME_FAILED and r.cost_micros:
        raise InvalidArgument("a failed job costs nothing")
    if r.cost_micros and not r.provider_account_id:
        raise InvalidArgument("provider_account_id is required when there is a cost")
    if not r.HasField("started_at") or not r.HasField("finished_at"):
        raise InvalidArgument("started_at and finished_at are required")
    started, finished = r.started_at.ToDatetime(tzinfo=_UTC), r.finished_at.ToDatetime(tzinfo=_UTC)
    if finished < started:
        raise InvalidArgument("finished_at is before started_at")
    return (
        _id(r.job_id, "job_id"), _id(r.consumer_account_id, "consumer_account_id"),
        _id(r.provider_account_id, "provider_account_id", optional=True),
        r.provider_id, r.node_id, r.model,
        *(getattr(r, n) for n in _INT_FIELDS), fee_bps, r.outcome, started, finished, earnings_hold_s,
    )


def _ts(dt) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def to_pb(row) -> pb.UsageRecord:
    return pb.UsageRecord(
        job_id=row["job_id"].bytes, consumer_account_id=row["consumer_account_id"].bytes,
        provider_account_id=row["provider_account_id"].bytes if row["provider_account_id"] else b"",
        provider_id=row["provider_id"], node_id=row["node_id"], model=row["model"],
        **{n: row[n] for n in _INT_FIELDS}, fee_bps=row["fee_bps"], outcome=row["outcome"],
        started_at=_ts(row["started_at"]), finished_at=_ts(row["finished_at"]),
        settlement=row["settlement"], fee_micros=row["fee_micros"], provider_micros=row["provider_micros"],
        settlement_error=row["settlement_error"], settled_at=_ts(row["settled_at"]),
        earning=row["earning"], earnings_hold_s=row["earnings_hold_s"],
        earning_release_at=_ts(row["earning_release_at"]), earning_resolved_at=_ts(row["earning_resolved_at"]),
        earning_note=row["earning_note"], check_result=row["check_result"], check_detail=row["check_detail"],
        checked_at=_ts(row["checked_at"]),
    )


def same(row, values: tuple) -> bool:
    """Whether a stored row records the same usage as ``values``."""
    return all(
        (row[c].bytes if hasattr(row[c], "bytes") else row[c]) == (v.bytes if hasattr(v, "bytes") else v)
        for c, v in zip(COLUMNS, values, strict=True)
        if c not in _SET_BY_METERING
    )

