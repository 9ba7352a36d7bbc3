"""Prometheus metrics of one gateway (its own registry, so that several
gateways can run in one process): requests by route and status, latency,
requests in flight, key checks by outcome (``unknown_cached``: refused
without database work), refusals at the edge by reason. Served at GET /metrics."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SERIES_CACHED_MAX = 4096  # (method, route, status) series whose children are kept at hand


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("idlegrid_gateway_requests", "HTTP requests answered, by route and status",
                                ("method", "route", "status"), registry=self.registry)
        self.latency = Histogram("idlegrid_gateway_request_duration_seconds",
                                 "Time from request to the end of the response (streams included)",
                                 ("method", "route"), buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.in_flight = Gauge("idlegrid_gateway_requests_in_flight", "Requests being answered now",
                               registry=self.registry)
        self.key_checks = Counter("idlegrid_gateway_key_checks", "API keys looked up, by outcome (found, unknown, "
                                  "unknown_cached: no database work, busy: no connection in time)", ("result",),
                                  registry=self.registry)
        self.refusals = Counter("idlegrid_gateway_edge_refusals", "Requests refused before any database work, "
                                "by reason (ip_rate, key_concurrency)", ("reason",), registry=self.registry)
        # labels() validates and locks on every call: each series' children are looked up once.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def count_in_flight(self, read) -> None:
        """The in-flight gauge reads ``read()`` when scraped (the middleware's
        own counter), instead of being moved twice on every request."""
        self.in_flight.set_function(read)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._series.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            if len(self._series) < SERIES_CACHED_MAX:
                self._series[key] = children
        children[0].inc()
        children[1].observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.gw.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
