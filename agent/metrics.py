"""Prometheus metrics, correct with one process or several.

Per-process metrics (requests, latencies, outcomes, Redis round trips, reloads) are ordinary
prometheus-client metrics; with several workers they live in `PROMETHEUS_MULTIPROC_DIR` and any worker's
`/metrics` adds them up. Service-wide state (open calls, reservations, charges, outbox backlog) is read
from Redis at scrape time, so it is exact whichever worker, or host, answers the scrape.
"""

from __future__ import annotations

import asyncio
import glob
import os
import platform
import time
from bisect import bisect_left

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
_BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)

REQUESTS = Counter("rating_requests_total", "Call requests answered (REST, GraphQL call mutations)",
                   ["endpoint", "status"])
LATENCY = Histogram("rating_request_duration_seconds", "HTTP request latency", ["endpoint"],
                    buckets=_LATENCY_BUCKETS)
AUTHORIZATIONS = Counter("rating_authorizations_total", "Authorization answers", ["outcome", "reason"])
IN_FLIGHT = Gauge("rating_requests_in_flight",
                  "Call requests a worker has started and not answered (sampled at each flush and scrape)",
                  multiprocess_mode="livesum")
SHED = Counter("rating_requests_shed_total",
               "Call requests refused at once with 503 because their worker had --max-in-flight requests in flight",
               ["endpoint"])
GRAPHQL_IN_FLIGHT = Gauge("rating_graphql_in_flight",
                          "GraphQL documents the management process is running (call mutations not counted)",
                          multiprocess_mode="livesum")
GRAPHQL_SHED = Counter("rating_graphql_shed_total",
                       "GraphQL documents refused at once with 503 because --graphql-max-in-flight were running")
REDIS_ROUND_TRIP = Histogram("rating_redis_round_trip_seconds", "Time of one pipelined batch to Redis",
                             buckets=_LATENCY_BUCKETS)
REDIS_BATCH = Histogram("rating_redis_batch_commands", "Commands per pipelined batch", buckets=_BATCH_BUCKETS)
LOOP_LAG = Histogram("rating_event_loop_lag_seconds",
                     "How late a worker's event loop ran a timer due every 10 ms: time it answered nothing",
                     buckets=_LATENCY_BUCKETS)
OUTBOX_WRITTEN = Counter("rating_outbox_written_total", "Outbox entries written to PostgreSQL")
OUTBOX_DEAD = Counter("rating_outbox_dead_letters_total",
                      "Outbox entries PostgreSQL refused for their content, moved to the dead-letter stream")
RECONCILED = Counter("rating_reconciled_ends_total",
                     "Calls ended by the agent because no Kamailio had them any more (charged up to last seen)")
RECONCILE_FAILURES = Counter("rating_reconcile_failures_total",
                             "Reconciliation rounds skipped because a Kamailio's dialogs could not be listed")
CATALOG_RELOADS = Counter("rating_catalog_reloads_total", "Catalog snapshots loaded")
CATALOG_LOAD_SECONDS = Gauge("rating_catalog_load_seconds", "Seconds the last catalog load took",
                             multiprocess_mode="max")
CATALOG_DELAY = Gauge("rating_catalog_reload_delay_seconds",
                      "Seconds from a catalog change's commit to its use by this process (last change)",
                      multiprocess_mode="max")
CATALOG_WAITS = Counter("rating_catalog_waits_total",
                        "Requests planned on a catalog older than the one published, made to wait for this "
                        "process to catch up (writers wait for the processes before publishing: rare)")
RATE_TABLE_SIZE = Gauge("rating_rate_table_prefixes", "Rates in the in-memory table", multiprocess_mode="max")
CATALOG_VERSION = Gauge("rating_catalog_version", "Catalog snapshots loaded by this process",
                        multiprocess_mode="max")
ACCOUNTS = Gauge("rating_catalog_accounts", "Accounts in the in-memory catalog", multiprocess_mode="max")
BUILD = Gauge("rating_build_info", "Build information", ["version", "python"], multiprocess_mode="max")
BUILD.labels(__version__, platform.python_version()).set(1)


class LiveState:
    """Collects service-wide state from Redis when scraped (see `cache/rating.lua`, keys rating:{g<n>}:stats)."""

    def __init__(self, redis) -> None:
        self.redis = redis
        self.snapshot: dict[str, float] = {}

    async def refresh(self) -> None:
        from cache import GROUPS

        pipe = self.redis.pipeline(transaction=False)  # every group's keys (a cluster's pipeline per node)
        for group in GROUPS:
            pipe.hgetall(group.stats)
            pipe.zcard(group.deadlines)
            pipe.xlen(group.outbox)
            pipe.xrange(group.outbox, count=1)
            pipe.scard(group.broken)
        replies = await pipe.execute()
        totals: dict[str, float] = {"open": 0, "backlog": 0, "lag": 0.0, "broken": 0}
        now = time.time()
        for at in range(0, len(replies), 5):
            stats, open_calls, backlog, oldest, broken = replies[at:at + 5]
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            totals["open"] += open_calls
            totals["backlog"] += backlog
            totals["broken"] += broken
            if oldest:  # the oldest entry of all the groups
                totals["lag"] = max(totals["lag"], now - int(oldest[0][0].split("-")[0]) / 1000)
        self.snapshot = totals

    def collect(self):
        s = self.snapshot
        yield GaugeMetricFamily("rating_calls_open", "Calls authorized or running", value=s.get("open", 0))
        yield GaugeMetricFamily("rating_calls_in_progress", "Calls begun and not ended", value=s.get("running", 0))
        yield CounterMetricFamily("rating_charges", "Charges made", value=s.get("charges", 0))
        yield CounterMetricFamily("rating_charged_amount", "Amount charged", value=s.get("charged", 0))
        yield CounterMetricFamily("rating_refunded_amount", "Amount refunded", value=s.get("refunded", 0))
        yield GaugeMetricFamily("rating_outbox_backlog", "Outbox entries not yet in PostgreSQL",
                                value=s.get("backlog", 0))
        yield GaugeMetricFamily("rating_outbox_lag_seconds", "Age of the oldest entry not yet in PostgreSQL",
                                value=s.get("lag", 0))
        yield GaugeMetricFamily("rating_calls_broken", "Calls the expiry could not finish (sets rating:{g<n>}:calls:broken)",
                                value=s.get("broken", 0))


def exposition(live: LiveState) -> bytes:
    """The metrics text: this process's registry, or every worker's files in multi-process mode, then the
    service-wide state of this app's Redis."""
    own = CollectorRegistry()
    own.register(live)
    if not MULTIPROCESS:
        return generate_latest(REGISTRY) + generate_latest(own)
    from prometheus_client import multiprocess

    class Collector(multiprocess.MultiProcessCollector):
        """Skips the files of a process that is creating them: prometheus-client makes a file empty, then
        sizes it, and reading it in between fails (a process starting while another serves a scrape)."""

        def collect(self):
            files = []
            for path in glob.glob(os.path.join(self._path, "*.db")):
                try:
                    if os.path.getsize(path):
                        files.append(path)
                except OSError:  # removed by mark_process_dead meanwhile
                    pass
            return self.merge(files, accumulate=True)

    registry = CollectorRegistry()
    Collector(registry)
    return generate_latest(registry) + generate_latest(own)


async def metrics_handler(request: web.Request) -> web.Response:
    from .keys import LIVE_STATE

    live = request.app[LIVE_STATE]
    ENDPOINTS.flush()
    try:
        await live.refresh()
    except Exception:  # noqa: BLE001 - a scrape must answer even when Redis does not
        live.snapshot = {}
    body = exposition(live)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Histogram:
    """Observations of one histogram child since the last flush: counts per bucket and their sum."""

    __slots__ = ("child", "upper", "counts", "total")

    def __init__(self, child, upper: tuple[float, ...]) -> None:
        self.child = child
        self.upper = upper
        self.counts = [0] * len(upper)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.upper, value)] += 1  # first bucket whose bound is >= value (`le`)
        self.total += value

    def flush(self) -> None:
        # prometheus-client keeps one value per bucket (not cumulative) and the sum; add to them directly,
        # since Histogram.observe takes one observation at a time.
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


def _upper_bounds(buckets: tuple[float, ...]) -> tuple[float, ...]:
    return (*buckets, float("inf"))


class Tally:
    """The hot path's metrics, counted in plain Python and added to prometheus-client once a second.

    In multi-process mode every prometheus-client update checks the process id and takes a lock per value:
    with several values per request that was about a tenth of a worker's CPU. Counting here and flushing
    in bulk makes it negligible; a scrape flushes its own process first, and other workers' counts are at
    most `FLUSH_INTERVAL` behind.
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, int], int] = {}
        self._outcomes: dict[tuple[str, str], int] = {}
        self._shed: dict[str, int] = {}
        self.in_flight = None  # the front door's count (http/front.py InFlight), sampled at each flush
        self._latency: dict[str, _Histogram] = {}
        self.redis_round_trip = _Histogram(REDIS_ROUND_TRIP, _upper_bounds(_LATENCY_BUCKETS))
        self.redis_batch = _Histogram(REDIS_BATCH, _upper_bounds(_BATCH_BUCKETS))
        self.loop_lag = _Histogram(LOOP_LAG, _upper_bounds(_LATENCY_BUCKETS))  # workers (serve.watch_loop)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get(endpoint)
        if histogram is None:
            histogram = self._latency[endpoint] = _Histogram(LATENCY.labels(endpoint), _upper_bounds(_LATENCY_BUCKETS))
        histogram.observe(seconds)

    def authorization(self, authorized: bool, reason: str | None) -> None:
        key = ("authorized", "") if authorized else ("refused", reason or "")
        self._outcomes[key] = self._outcomes.get(key, 0) + 1

    def shed(self, endpoint: str) -> None:
        self._shed[endpoint] = self._shed.get(endpoint, 0) + 1

    def redis_batch_done(self, seconds: float, commands: int) -> None:
        self.redis_round_trip.observe(seconds)
        self.redis_batch.observe(commands)

    def flush(self) -> None:
        requests, self._requests = self._requests, {}
        for (endpoint, status), count in requests.items():
            REQUESTS.labels(endpoint, str(status)).inc(count)
        outcomes, self._outcomes = self._outcomes, {}
        for labels, count in outcomes.items():
            AUTHORIZATIONS.labels(*labels).inc(count)
        shed, self._shed = self._shed, {}
        for endpoint, count in shed.items():
            SHED.labels(endpoint).inc(count)
        if self.in_flight is not None:
            IN_FLIGHT.set(self.in_flight.count)
        for histogram in (*self._latency.values(), self.redis_round_trip, self.redis_batch, self.loop_lag):
            histogram.flush()


FLUSH_INTERVAL = 1.0
ENDPOINTS = Tally()


async def flush_periodically(interval: float = FLUSH_INTERVAL) -> None:
    """The task that carries the tally into prometheus-client (one per process; flushes once more when
    cancelled, so a worker stopping loses nothing)."""
    try:
        while True:
            await asyncio.sleep(interval)
            ENDPOINTS.flush()
    finally:
        ENDPOINTS.flush()
