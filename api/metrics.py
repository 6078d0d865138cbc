"""Prometheus metrics at GET /metrics (prometheus-client), one registry per app and so per worker
process: every worker's /metrics reports that worker alone (docs/observability.md#metrics).

Per request (`api.observe.Observe`) a counter and a histogram move, through label children looked
up once per (route, operation, outcome); errors by code only when there are some. What describes
the process rather than its requests (the pool, exports in flight, the audience index) is read when
scraped: the index's lag and queue for every brand in one statement (`store.audiences.deltas.lags`).
Postings batch sizes come from the batchers (`store.ledger.batchers.Postings`' ``on_batch``).
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from api.state import AppState
from store.audiences.deltas import lags

log = logging.getLogger(__name__)
# No `_created` series beside every counter and histogram: half the text, of no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # store.ledger.batching.MAX_BATCH is 64
LABELS = ("route", "operation", "outcome")
INDEX_TIMEOUT = 2.0  # seconds a scrape waits for a connection to read the index's lag


class Metrics:
    """The app's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "omnimember_requests", "Requests by route, GraphQL operation and outcome", LABELS, registry=registry
        )
        self.latency = Histogram(
            "omnimember_request_duration_seconds",
            "Time from a request's arrival to the end of its response (an export's whole stream)",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "omnimember_errors", "Requests failing, by error code (once a request)", ["code"], registry=registry
        )
        self.pool_in_use = Gauge(
            "omnimember_pool_connections_in_use", "Database connections lent out", registry=registry
        )
        self.pool_size = Gauge("omnimember_pool_connections", "Database connections open", registry=registry)
        self.pool_max = Gauge("omnimember_pool_connections_max", "OMNIMEMBER_POOL_MAX", registry=registry)
        self.pool_waiting = Gauge(
            "omnimember_pool_requests_waiting", "Callers waiting for a database connection", registry=registry
        )
        self.exports = Gauge("omnimember_exports_in_flight", "Audience exports streaming now", registry=registry)
        self.exports_max = Gauge("omnimember_exports_max", "OMNIMEMBER_MAX_EXPORTS", registry=registry)
        self.index_lag = Gauge(
            "omnimember_audience_index_lag_seconds",
            "How far the brand's audience index is behind its oldest queued change or unswept tag expiry",
            ["brand"],
            registry=registry,
        )
        self.index_pending = Gauge(
            "omnimember_audience_index_pending_changes",
            "Member changes queued for the brand's audience index",
            ["brand"],
            registry=registry,
        )
        self.index_read_failures = Counter(
            "omnimember_audience_index_read_failures",
            "Scrapes that could not read the audience index's lag (its gauges keep their last values)",
            registry=registry,
        )
        self.batch_size = Histogram(
            "omnimember_postings_batch_size",
            "Postings sent to the database together, by kind (credits, debits, orders)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._batches = {kind: self.batch_size.labels(kind) for kind in ("credits", "debits", "orders")}
        # Label children by (route, operation, outcome): `labels()` once per combination.
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._error_children: dict[str, Counter] = {}

    def observe(self, route: str, operation: str, outcome: str, seconds: float, codes: list[str] | None) -> None:
        """One answered request (`api.observe.Observe`): every label value is bounded by its caller."""
        key = (route, operation, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key), self.latency.labels(*key))
        children[0].inc()
        children[1].observe(seconds)
        if codes:
            for code in dict.fromkeys(codes):
                counter = self._error_children.get(code)
                if counter is None:
                    counter = self._error_children[code] = self.errors.labels(code)
                counter.inc()

    def batch_observed(self, kind: str, size: int) -> None:
        """A postings batcher launched a batch (`store.ledger.batchers.Postings`' ``on_batch``)."""
        self._batches[kind].observe(size)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: the gauges read now, then the registry in Prometheus' text format."""
        state: AppState = request.state.omnimember
        stats = state.pool.get_stats()
        self.pool_size.set(stats.get("pool_size", 0))
        self.pool_in_use.set(stats.get("pool_size", 0) - stats.get("pool_available", 0))
        self.pool_max.set(stats.get("pool_max", 0))
        self.pool_waiting.set(stats.get("requests_waiting", 0))
        limit = state.settings.max_exports
        self.exports_max.set(limit)
        self.exports.set(limit - state.export_slots._value)  # slots taken (asyncio keeps the count there)
        await self._read_index(state)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _read_index(self, state: AppState) -> None:
        if state.pool_wedged():  # a scrape must not queue behind stuck connections
            self.index_read_failures.inc()
            return
        try:
            async with state.pool.connection(timeout=INDEX_TIMEOUT) as conn:
                found = await lags(conn)
        except Exception as error:  # the rest of the metrics are still worth answering
            log.warning("metrics: the audience index's lag could not be read: %s", type(error).__name__)
            self.index_read_failures.inc()
            return
        self.index_lag.clear()  # brands gone since the last scrape leave no series behind
        self.index_pending.clear()
        for lag in found:
            self.index_lag.labels(lag.brand_code).set(lag.seconds)
            self.index_pending.labels(lag.brand_code).set(lag.pending)
