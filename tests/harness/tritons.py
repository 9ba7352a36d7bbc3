"""One pool of demo Tritons for the whole test session.

A demo Triton is a child process that loads SmolLM2 with llama.cpp: starting
one costs seconds of CPU and stopping one a few more. Most scenarios only need
*a* working node, so they share one instance per set of options
(:meth:`TritonPool.shared`) for the session. A scenario whose Triton carries
state or is killed (``fail_after`` counts requests; a test that SIGKILLs its
node) takes one of its own (:meth:`TritonPool.own`); the pool still stops it
at the end if the test did not.

Sharing is safe because tests run one at a time and a shared Triton holds no
state between requests: never kill or stop one you got from ``shared``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

# Options that change what a Triton does on every request, never with use:
# a shared instance behaves the same for its second user as for its first.
STATELESS_OPTIONS = frozenset({"models", "llm_delay_ms", "fail", "n_threads", "llm_extra_tokens"})
SHARED_MAX = 6  # distinct shared instances alive at once (each holds a model in memory)


def _start(**options):
    try:
        from idlegrid.demo import start_demo_triton
    except ImportError as e:  # the node extra is not installed
        pytest.skip(f"demo Triton unavailable: {e}")
    return start_demo_triton(**options)


def _key(options: dict) -> tuple:
    if "models" in options:
        options = {**options, "models": tuple(options["models"])}
    return tuple(sorted(options.items()))


class TritonPool:
    """Demo Tritons started on first use: one per distinct options for
    :meth:`shared`, a fresh one per call for :meth:`own`. Thread-safe, so
    async code may call it through ``asyncio.to_thread``."""

    def __init__(self, *, shared_max: int = SHARED_MAX) -> None:
        self._shared_max = shared_max
        self._shared: dict[tuple, object] = {}
        self._own: list = []
        self._lock = threading.Lock()
        self.starts = 0  # how many Tritons this pool started (reported at the end of the session)

    def shared(self, **options):
        """The session's Triton for ``options`` (see start_demo_triton),
        started on first use. Only options without state are accepted."""
        stateful = set(options) - STATELESS_OPTIONS
        if stateful:
            raise ValueError(f"{sorted(stateful)} give a Triton state: use TritonPool.own()")
        key = _key(options)
        with self._lock:
            if key not in self._shared:
                if len(self._shared) >= self._shared_max:
                    raise RuntimeError(f"more than {self._shared_max} shared demo Tritons: share more options")
                self._shared[key] = _start(**options)
                self.starts += 1
            return self._shared[key]

    def own(self, **options):
        """A new Triton for one scenario; the caller may kill or stop it."""
        triton = _start(**options)
        with self._lock:
            self._own.append(triton)
            self.starts += 1
        return triton

    def close(self) -> dict[tuple, int]:
        """Stops every shared Triton, all at once, and throws away (kills)
        every own one still running; returns the exit status of each shared
        one by its options (0 is a clean stop)."""
        with self._lock:
            shared, own = dict(self._shared), list(self._own)
            self._shared.clear()
            self._own.clear()
        with ThreadPoolExecutor(max_workers=max(1, len(shared) + len(own))) as ex:
            codes = dict(zip(shared, ex.map(lambda t: t.stop(), shared.values()), strict=True))
            list(ex.map(lambda t: t.kill(), own))
        return codes


POOL = TritonPool()
