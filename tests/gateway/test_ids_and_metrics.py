"""Request-path helpers on their own: fresh job ids are RFC 4122 version 4
UUIDs written as ``uuid`` writes them, and the gateway's metrics count
every request of a series and report requests in flight when scraped."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest

from idlegrid.gateway.job_ids import job_uuid, random_uuid4
from idlegrid.gateway.metrics import SERIES_CACHED_MAX, Metrics


def test_a_fresh_job_id_is_a_random_uuid4_written_as_uuid_writes_it():
    seen = set()
    for _ in range(2000):
        b = random_uuid4()
        u = uuid.UUID(bytes=b)
        assert len(b) == 16 and u.version == 4 and u.variant == uuid.RFC_4122
        assert job_uuid(b) == str(u)
        seen.add(b)
    assert len(seen) == 2000


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_request_is_counted_whether_its_series_is_new_or_known():
    m = Metrics()
    for _ in range(3):
        m.observe("POST", "/v2/models/{model}/infer", 200, 0.002)
    m.observe("POST", "/v2/models/{model}/infer", 429, 0.001)
    assert _sample(m, "idlegrid_gateway_requests_total", method="POST", route="/v2/models/{model}/infer",
                   status="200") == 3
    assert _sample(m, "idlegrid_gateway_requests_total", method="POST", route="/v2/models/{model}/infer",
                   status="429") == 1
    assert _sample(m, "idlegrid_gateway_request_duration_seconds_count", method="POST",
                   route="/v2/models/{model}/infer") == 4


def test_series_past_the_cache_bound_are_still_counted():
    m = Metrics()
    for i in range(SERIES_CACHED_MAX + 5):
        m.observe(f"M{i}", "unmatched", 404, 0.001)
    m.observe(f"M{SERIES_CACHED_MAX + 4}", "unmatched", 404, 0.001)
    assert _sample(m, "idlegrid_gateway_requests_total", method=f"M{SERIES_CACHED_MAX + 4}", route="unmatched",
                   status="404") == 2


def test_requests_in_flight_are_read_when_scraped():
    m = Metrics()
    now = [0]
    m.count_in_flight(lambda: now[0])
    now[0] = 7
    assert _sample(m, "idlegrid_gateway_requests_in_flight") == 7
    assert b"idlegrid_gateway_requests_in_flight 7.0" in generate_latest(m.registry)
