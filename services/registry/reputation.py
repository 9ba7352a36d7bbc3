"""A node's reputation: what spot checks and token-count cross-checks found,
the score that routing reads and the share of its jobs that is spot-checked.

    score = (passed + 1) / (passed + 2 + 4 · failed + disagreements)

A new node scores 0.5; each passed check raises the score, a failed spot
check weighs four times what a pass does, a token-count disagreement as much
as a pass. The sampling rate:

- fewer than NEW_CHECKS (50) passed checks: NEW_RATE (0.2);
- then NEW_RATE · (1 - score) · 5, within [FLOOR_RATE (0.02), NEW_RATE]: a node
  scoring 0.98 or more is checked at the floor, one at 0.8 or less like a new node;
- a node whose provider is under review (another of its nodes failed a spot
  check): at least REVIEW_RATE (0.5).

``reasons`` keeps the last REASONS_MAX failures and disagreements, newest
first, for the provider to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idlegrid.registry.v1 import registry_pb2 as pb

NEW_CHECKS = 50
NEW_RATE = 0.2
FLOOR_RATE = 0.02
REVIEW_RATE = 0.5
FAILURE_WEIGHT = 4
REASONS_MAX = 10


@dataclass(slots=True)
class Reputation:
    checks_passed: int = 0
    checks_failed: int = 0
    count_disagreements: int = 0
    reasons: list[str] = field(default_factory=list)  # newest first

    @property
    def score(self) -> float:
        good = self.checks_passed + 1
        return good / (good + 1 + FAILURE_WEIGHT * self.checks_failed + self.count_disagreements)

    def sample_rate(self, *, under_review: bool) -> float:
        if self.checks_passed < NEW_CHECKS:
            rate = NEW_RATE
        else:
            rate = min(NEW_RATE, max(FLOOR_RATE, NEW_RATE * (1 - self.score) * 5))
        return max(rate, REVIEW_RATE) if under_review else rate

    def record(self, kind: int, passed: bool, reason: str) -> None:
        """Counts one verdict (reported once: the caller keeps them idempotent)."""
        if kind == pb.CHECK_KIND_SPOT_CHECK:
            if passed:
                self.checks_passed += 1
                return
            self.checks_failed += 1
        elif passed:
            return  # a token count that agreed: the norm, nothing to count
        else:
            self.count_disagreements += 1
        self.reasons.insert(0, reason)
        del self.reasons[REASONS_MAX:]

    def to_proto(self, *, under_review: bool) -> pb.Reputation:
        return pb.Reputation(checks_passed=self.checks_passed, checks_failed=self.checks_failed,
                             count_disagreements=self.count_disagreements, score=self.score,
                             sample_rate=self.sample_rate(under_review=under_review), reasons=self.reasons)


def reason_for(kind: int, passed: bool, job_id: bytes, detail: str) -> str:
    """The line a provider reads for one verdict."""
    what = "spot check" if kind == pb.CHECK_KIND_SPOT_CHECK else "token count"
    verdict = "passed" if passed else ("failed" if kind == pb.CHECK_KIND_SPOT_CHECK else "disagreed")
    return f"{what} of job {job_id.hex()} {verdict}" + (f": {detail}" if detail else "")
