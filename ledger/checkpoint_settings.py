"""Where the ledger's signed checkpoints come from and go: read once at
start-up from the environment (:meth:`CheckpointSettings.from_env`); tests pass
their own.

A checkpoint signs the chain head (batch, hash, last seq, time) with an Ed25519
key that the database never sees, and appends it to a log outside the
database. Someone who holds only the database credential can then no longer
rewrite history and recompute the chain: ``idlegrid ledger verify`` checks the
recomputed chain against every signed checkpoint.

| variable | default | meaning |
|---|---|---|
| IDLEGRID_LEDGER_CHECKPOINTS | auto | auto, required or off (below) |
| IDLEGRID_LEDGER_CHECKPOINT_KEY | (unset) | PEM file: the Ed25519 private key that signs (the ledger service only; a Secret in a cluster) |
| IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY | $IDLEGRID_HOME/ledger-checkpoint.pub | PEM file(s), comma-separated: the keys ``verify`` accepts (more than one while a key is rotated) |
| IDLEGRID_LEDGER_CHECKPOINT_LOG | $IDLEGRID_HOME/ledger-checkpoints.jsonl | the append-only checkpoint log (a volume the database cannot write) |
| IDLEGRID_LEDGER_CHECKPOINT_EVERY_S | 10 | how often the service checkpoints a chain head that moved |
| IDLEGRID_LEDGER_CHECKPOINT_LAG_MAX_S | 60 | ``verify`` reports batches older than this that no checkpoint covers (a lost tail) |

Modes. ``auto``: sign with IDLEGRID_LEDGER_CHECKPOINT_KEY when it is set; on
one machine (no IDLEGRID_DATABASE_URL) with a key pair kept in $IDLEGRID_HOME
(created on first start, the private key mode 0600); otherwise checkpoints
are off, with a warning. ``verify`` checks them when a public key is found.
``required``: the service refuses to start without a readable private key
(IDLEGRID_LEDGER_CHECKPOINT_KEY, or on one machine the home key pair), and
``verify`` to run without a readable public key: a ConfigError naming the
variable and the file. ``off``: neither writes nor checks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from idlegrid.common.errors import ConfigError

MODES = ("auto", "required", "off")
HOME_KEY = "ledger-checkpoint.key"
HOME_PUBLIC_KEY = "ledger-checkpoint.pub"
HOME_LOG = "ledger-checkpoints.jsonl"
EVERY_S = 10.0
LAG_MAX_S = 60.0
PUBLIC_KEYS_MAX = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointSettings:
    mode: str = "auto"
    home: Path
    embedded: bool = True  # one machine: the database lives in $IDLEGRID_HOME
    key: Path | None = None  # the private key (None: the home key pair, where allowed)
    public_keys: tuple[Path, ...] = ()  # () : the home public key
    log: Path | None = None  # None: $IDLEGRID_HOME/ledger-checkpoints.jsonl
    every_s: float = EVERY_S
    lag_max_s: float = LAG_MAX_S

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"IDLEGRID_LEDGER_CHECKPOINTS must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.01 <= self.every_s <= 3600:
            raise ConfigError(f"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S must be in [0.01, 3600], got {self.every_s}")
        if not self.every_s < self.lag_max_s <= 7 * 86_400:
            raise ConfigError("IDLEGRID_LEDGER_CHECKPOINT_LAG_MAX_S must be above "
                              f"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S ({self.every_s}) and at most a week, "
                              f"got {self.lag_max_s}")
        if len(self.public_keys) > PUBLIC_KEYS_MAX:
            raise ConfigError(f"IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY names at most {PUBLIC_KEYS_MAX} files")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, home: Path, embedded: bool,
                 **overrides) -> CheckpointSettings:
        """The settings in the table above; ``embedded``: the database is the
        embedded one (no IDLEGRID_DATABASE_URL)."""
        env = os.environ if env is None else env
        publics = tuple(Path(p.strip()) for p in (env.get("IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY") or "").split(",")
                        if p.strip())
        values = {
            "mode": (env.get("IDLEGRID_LEDGER_CHECKPOINTS") or "auto").strip().lower(),
            "home": home,
            "embedded": embedded,
            "key": _path(env, "IDLEGRID_LEDGER_CHECKPOINT_KEY"),
            "public_keys": publics,
            "log": _path(env, "IDLEGRID_LEDGER_CHECKPOINT_LOG"),
            "every_s": _seconds(env, "IDLEGRID_LEDGER_CHECKPOINT_EVERY_S", EVERY_S),
            "lag_max_s": _seconds(env, "IDLEGRID_LEDGER_CHECKPOINT_LAG_MAX_S", LAG_MAX_S),
        }
        return cls(**{**values, **overrides})

    @property
    def log_path(self) -> Path:
        return self.log or self.home / HOME_LOG

    @property
    def signs(self) -> bool:
        """Whether the service writes checkpoints."""
        if self.mode == "off":
            return False
        return self.mode == "required" or self.key is not None or self.embedded

    @property
    def home_key_allowed(self) -> bool:
        """Whether the service may create (and use) a key pair in $IDLEGRID_HOME."""
        return self.key is None and self.embedded and self.mode != "off"

    def public_key_paths(self) -> tuple[Path, ...]:
        return self.public_keys or (self.home / HOME_PUBLIC_KEY,)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    return Path(raw) if raw else None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number of seconds, got {raw!r}")
    return value
