"""The clearing rules (common/clearing.py): one rounding per aggregate,
fees never lost to per-job flooring, and a Merkle root that any change to
the record set changes."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from idlegrid.common.clearing import (
    PICOS_PER_MICRO,
    RecordFacts,
    llm_cost_picos,
    merkle_root,
    micros_ceil,
    provider_micros,
)


def _record(i: int, cost: int = 1) -> RecordFacts:
    return RecordFacts(job_id=i.to_bytes(16, "big"), consumer_account_id=b"c" * 16, provider_account_id=b"p" * 16,
                       node_id=b"n" * 16, lease_id=b"l" * 16, prompt_tokens=10, completion_tokens=10, requests=0,
                       price_in_per_mtok=50_000, price_out_per_mtok=50_000, price_per_request=0, cost_picos=cost,
                       outcome=1)


def test_a_tiny_job_is_not_rounded_up_on_its_own():
    # 20 tokens at 50,000 µcr per million tokens: 1,000,000 pico-credits = exactly 1 µcr;
    # 10 tokens: half a micro-credit, which per-job rounding would have made 1.
    assert llm_cost_picos(50_000, 50_000, 10, 10) == PICOS_PER_MICRO
    half = llm_cost_picos(50_000, 0, 10, 0)
    assert micros_ceil(half * 1000) == 500  # a thousand such jobs cost 500 µcr, not 1,000


@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=200), st.integers(0, 5_000))
def test_charged_is_the_ceiling_of_the_exact_sum_and_the_fee_is_never_lost(costs, fee_bps):
    total = sum(costs)
    charged = micros_ceil(total)
    assert charged * PICOS_PER_MICRO >= total > (charged - 1) * PICOS_PER_MICRO or total == charged == 0
    provider = provider_micros(total, fee_bps)
    fee = charged - provider
    # the fee is at least the exact fee share: flooring only ever favours it
    assert fee * PICOS_PER_MICRO * 10_000 >= total * fee_bps
    # ... and per-job flooring of the provider side would have paid providers no more
    assert provider >= sum(provider_micros(c, fee_bps) for c in costs)


def test_the_root_commits_to_every_record_and_only_them():
    records = [_record(i) for i in range(7)]
    root = merkle_root(records)
    assert merkle_root(list(reversed(records))) == root  # order-independent (sorted by job id)
    assert merkle_root(records[:-1]) != root  # a missing record
    assert merkle_root([*records, _record(99)]) != root  # an extra one
    changed = [dataclasses.replace(records[3], completion_tokens=11), *records[:3], *records[4:]]
    assert merkle_root(changed) != root  # a changed one
    assert len(root) == 32

