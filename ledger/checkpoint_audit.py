"""What ``ledger verify`` proves with the checkpoints, beyond the rows:

1. every line of the checkpoint log is a checkpoint signed by an accepted key
   (a bad line, an unknown key or a bad signature is named by its line);
2. the checkpoints follow each other: n from 1 without gaps (removed lines),
   the batch and the signing time never going back;
3. the chain recomputed from the transfers passes through every checkpoint's
   (batch, hash, last seq): a rewrite of signed history, even with the chain
   recomputed by someone holding the database credential, is caught here;
4. no batch older than lag_max_s is left uncovered (a lost tail of the log,
   or a ledger that stopped without checkpointing).

Reading the log happens before the database snapshot (:func:`load`); the
comparison after the replay (:func:`check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from idlegrid.ledger.chain import GENESIS
from idlegrid.ledger.checkpoint_keys import public_keys
from idlegrid.ledger.checkpoint_log import Checkpoint, CheckpointLog, parse
from idlegrid.ledger.checkpoint_settings import CheckpointSettings
from idlegrid.ledger.values import BatchRecord

PROBLEMS_MAX = 100


@dataclass
class Anchors:
    """The checkpoint log as read and checked against the public keys."""

    log_path: Path
    lag_max_s: float
    keys: dict[str, Ed25519PublicKey]
    present: bool = False
    valid: list[Checkpoint] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, msg: str) -> None:
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(msg)


def load(settings: CheckpointSettings) -> Anchors | None:
    """Reads the log; None when checkpoints are not checked (off, or auto
    with no public key). ``required`` without a loadable key: ConfigError."""
    if settings.mode == "off":
        return None
    keys = public_keys(settings, required=settings.mode == "required")
    if not keys:
        return None
    anchors = Anchors(settings.log_path, settings.lag_max_s, keys)
    try:
        for lineno, raw in CheckpointLog(settings.log_path).lines():
            anchors.present = True
            _line(anchors, lineno, raw)
    except FileNotFoundError:
        pass
    except OSError as e:
        anchors.add(f"cannot read the checkpoint log {settings.log_path}: {e.strerror}")
    return anchors


def _line(anchors: Anchors, lineno: int, raw: bytes) -> None:
    where = f"checkpoint log line {lineno}"
    try:
        cp = parse(raw)
    except ValueError as e:
        anchors.add(f"{where}: not a checkpoint ({e})")
        return
    key = anchors.keys.get(cp.key)
    if key is None:
        anchors.add(f"{where} (checkpoint {cp.n}): signed by key {cp.key}, which is not an accepted public key")
        return
    if not cp.valid_under(key):
        anchors.add(f"{where} (checkpoint {cp.n}): bad signature: forged or altered")
        return
    prev = anchors.valid[-1] if anchors.valid else None
    expected = prev.n + 1 if prev else 1
    if cp.n > expected:
        anchors.add(f"{where}: checkpoints {expected}..{cp.n - 1} are missing from the log (lines removed)")
    elif cp.n < expected:
        anchors.add(f"{where}: checkpoint {cp.n} repeats or goes back (after checkpoint {expected - 1})")
    if prev is not None and cp.batch < prev.batch:
        anchors.add(f"{where} (checkpoint {cp.n}): batch {cp.batch} goes back from batch {prev.batch}")
    if prev is not None and cp.at < prev.at:
        anchors.add(f"{where} (checkpoint {cp.n}): signed before the checkpoint above it")
    anchors.valid.append(cp)


def check(add, anchors: Anchors, recomputed: dict[int, tuple[bytes, int]], batches: dict[int, BatchRecord],
          last_batch: int, now: datetime) -> None:
    """Checks the recomputed chain (``recomputed``: hash and last seq at each
    checkpointed batch; ``last_batch``: where it ends) against the anchors;
    ``add`` reports a problem."""
    for p in anchors.problems:
        add(p)
    for cp in anchors.valid:
        what = f"checkpoint {cp.n} (batch {cp.batch}, seq {cp.last_seq}, signed {cp.at.isoformat()})"
        if cp.batch > last_batch:
            add(f"{what}: the chain ends at batch {last_batch}: signed history was removed")
        elif cp.batch == 0:
            if (cp.hash, cp.last_seq) != (GENESIS, 0):
                add(f"{what}: batch 0 must be the genesis hash")
        elif (got := recomputed.get(cp.batch)) is None:
            add(f"{what}: the recomputed chain has no batch {cp.batch}")
        elif got != (cp.hash, cp.last_seq):
            add(f"{what}: the recomputed chain does not pass through it: "
                f"history up to batch {cp.batch} was rewritten")
    covered = max((cp.batch for cp in anchors.valid), default=0)
    first = batches.get(covered + 1)
    if last_batch <= covered or first is None:
        return
    lag = timedelta(seconds=anchors.lag_max_s)
    newest_at = max((cp.at for cp in anchors.valid), default=None)
    if now - first.committed_at > lag or (newest_at is not None and first.committed_at < newest_at - lag):
        missing = "" if anchors.present else f" (there is no checkpoint log at {anchors.log_path})"
        add(f"batches {covered + 1}..{last_batch} (committed from {first.committed_at.isoformat()}) are covered "
            f"by no checkpoint{missing}, and are older than {anchors.lag_max_s:g} s: the checkpoint log lost its "
            "tail, or the ledger stopped without checkpointing (it checkpoints the head when it starts)")
