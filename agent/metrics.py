"""Prometheus metrics, correct with one process or several.

Per-process metrics (requests, latencies, outcomes, Redis round trips, reloads) are ordinary
prometheus-client metrics; with several workers they live in `PROMETHEUS_MULTIPROC_DIR` and any worker's
`/metrics` adds them up. Service-wide state (open calls, reservations, charges, outbox backlog) is read
from Redis at scrape time, so it is exact whichever worker, or host, answers the scrape.
"""

from __future__ import annotations

import os
import platform
import time

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("rating_requests_total", "HTTP requests answered", ["endpoint", "status"])
LATENCY = Histogram("rating_request_duration_seconds", "HTTP request latency", ["endpoint"],
                    buckets=_LATENCY_BUCKETS)
AUTHORIZATIONS = Counter("rating_authorizations_total", "Authorization answers", ["outcome", "reason"])
REDIS_ROUND_TRIP = Histogram("rating_redis_round_trip_seconds", "Time of one pipelined batch to Redis",
                             buckets=_LATENCY_BUCKETS)
REDIS_BATCH = Histogram("rating_redis_batch_commands", "Commands per pipelined batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))
OUTBOX_WRITTEN = Counter("rating_outbox_written_total", "Outbox entries written to PostgreSQL")
CATALOG_RELOADS = Counter("rating_catalog_reloads_total", "Catalog snapshots loaded")
CATALOG_LOAD_SECONDS = Gauge("rating_catalog_load_seconds", "Seconds the last catalog load took",
                             multiprocess_mode="max")
CATALOG_DELAY = Gauge("rating_catalog_reload_delay_seconds",
                      "Seconds from a catalog change's commit to its use by this process (last change)",
                      multiprocess_mode="max")
RATE_TABLE_SIZE = Gauge("rating_rate_table_prefixes", "Rates in the in-memory table", multiprocess_mode="max")
CATALOG_VERSION = Gauge("rating_catalog_version", "Catalog snapshots loaded by this process",
                        multiprocess_mode="max")
ACCOUNTS = Gauge("rating_catalog_accounts", "Accounts in the in-memory catalog", multiprocess_mode="max")
BUILD = Gauge("rating_build_info", "Build information", ["version", "python"], multiprocess_mode="max")
BUILD.labels(__version__, platform.python_version()).set(1)


class LiveState:
    """Collects service-wide state from Redis when scraped (see `cache/rating.lua`, key rating:stats)."""

    def __init__(self, redis) -> None:
        self.redis = redis
        self.snapshot: dict[str, float] = {}

    async def refresh(self) -> None:
        from cache import OUTBOX

        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall("rating:stats")
        pipe.xlen(OUTBOX)
        pipe.xrange(OUTBOX, count=1)
        stats, backlog, oldest = await pipe.execute()
        lag = 0.0
        if oldest:
            lag = max(0.0, time.time() - int(oldest[0][0].split("-")[0]) / 1000)
        self.snapshot = {**{k: float(v) for k, v in stats.items()}, "backlog": backlog, "lag": lag}

    def collect(self):
        s = self.snapshot
        yield GaugeMetricFamily("rating_calls_open", "Calls authorized or running", value=s.get("open", 0))
        yield GaugeMetricFamily("rating_calls_in_progress", "Calls begun and not ended", value=s.get("running", 0))
        yield GaugeMetricFamily("rating_reserved_amount", "Balance held by open calls", value=s.get("reserved", 0))
        yield CounterMetricFamily("rating_charges", "Charges made", value=s.get("charges", 0))
        yield CounterMetricFamily("rating_charged_amount", "Amount charged", value=s.get("charged", 0))
        yield CounterMetricFamily("rating_refunded_amount", "Amount refunded", value=s.get("refunded", 0))
        yield GaugeMetricFamily("rating_outbox_backlog", "Outbox entries not yet in PostgreSQL",
                                value=s.get("backlog", 0))
        yield GaugeMetricFamily("rating_outbox_lag_seconds", "Age of the oldest entry not yet in PostgreSQL",
                                value=s.get("lag", 0))


def exposition(live: LiveState) -> bytes:
    """The metrics text: this process's registry, or every worker's files in multi-process mode, then the
    service-wide state of this app's Redis."""
    own = CollectorRegistry()
    own.register(live)
    if not MULTIPROCESS:
        return generate_latest(REGISTRY) + generate_latest(own)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry) + generate_latest(own)


async def metrics_handler(request: web.Request) -> web.Response:
    from .keys import LIVE_STATE

    live = request.app[LIVE_STATE]
    try:
        await live.refresh()
    except Exception:  # noqa: BLE001 - a scrape must answer even when Redis does not
        live.snapshot = {}
    body = exposition(live)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class EndpointMetrics:
    """Cached label children: `labels()` costs more than the increment it guards."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, int], object] = {}
        self._latency: dict[str, object] = {}
        self._outcomes: dict[tuple[str, str], object] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._requests.get((endpoint, status))
        if counter is None:
            counter = self._requests[(endpoint, status)] = REQUESTS.labels(endpoint, str(status))
        counter.inc()
        histogram = self._latency.get(endpoint)
        if histogram is None:
            histogram = self._latency[endpoint] = LATENCY.labels(endpoint)
        histogram.observe(seconds)

    def authorization(self, authorized: bool, reason: str | None) -> None:
        key = ("authorized", "") if authorized else ("refused", reason or "")
        counter = self._outcomes.get(key)
        if counter is None:
            counter = self._outcomes[key] = AUTHORIZATIONS.labels(*key)
        counter.inc()


ENDPOINTS = EndpointMetrics()
