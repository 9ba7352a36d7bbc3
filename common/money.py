"""Money rules shared by every service: amounts are integer micro-credits
(1 credit = 1,000,000), never floats.

- ``AMOUNT_MAX``: the largest amount any API accepts (a PostgreSQL bigint).
- ``split_fee``: how a job's cost divides between its provider and the
  platform. The fee is floor-rounded and the provider gets the rest, so the
  two always add up to the cost exactly.
"""

from __future__ import annotations

AMOUNT_MAX = 2**63 - 1
BPS_PER_UNIT = 10_000  # basis points in 100 %


def split_fee(cost: int, fee_bps: int) -> tuple[int, int]:
    """(provider_amount, fee) for ``cost`` at a fee of ``fee_bps`` basis points."""
    fee = cost * fee_bps // BPS_PER_UNIT
    return cost - fee, fee
