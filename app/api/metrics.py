"""Prometheus metrics of the API (served at /metrics). With several API processes
(`python -m app.serve --workers N`) they write to PROMETHEUS_MULTIPROC_DIR and /metrics
sums every process's, so that counters never go backwards between scrapes."""

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess

from ..core import stats
from ..core.jobs import heartbeats
from ..core.jobs.states import TERMINAL

REQUESTS = Counter("rapid_adapt_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "rapid_adapt_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
ADAPTATIONS = Counter("rapid_adapt_adaptations_created_total", "adaptations accepted", ["model"])
CACHE = Counter(
    "rapid_adapt_weights_cache_total", "adapted-weights lookups by where they were found", ["result"]
)  # lru_hit, redis_hit, miss_readapt
PREDICT_BATCH = Histogram(
    "rapid_adapt_predict_batch_images", "images per batched forward pass", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500)
)


class StoreCollector:
    """Figures that live in Redis, read at scrape time: jobs by final status and
    their duration (written by the workers), the backlog, adaptations stored, workers alive,
    the workers' upkeep errors."""

    def __init__(self, jobs, heartbeat_window: float, tenants: list[str]):
        self.jobs, self.store, self.window, self.tenants = jobs, jobs.store, heartbeat_window, tenants

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        try:
            counts = stats.read(self.store.r)
            stored = self.store.count_adaptations(self.tenants)
            workers = len(heartbeats.alive(self.store.r, self.window))
            depth = self.jobs.scheduler.backlog()
            running = self.jobs.scheduler.in_flight()
        except Exception:
            return  # Redis away: /readyz says so; the other metrics still answer
        finished = CounterMetricFamily(
            "rapid_adapt_adaptations_finished", "adaptation jobs by final status", labels=["status"]
        )
        for status in TERMINAL:
            finished.add_metric([status], stats.finished(counts, status))
        yield finished
        buckets = stats.cumulative(counts)
        yield HistogramMetricFamily(
            "rapid_adapt_adaptation_duration_seconds",
            "time from a job's start to its end on a worker",
            buckets=buckets,
            sum_value=counts.get("duration_sum", 0.0),
        )
        yield GaugeMetricFamily("rapid_adapt_queue_depth", "adaptation jobs waiting for a worker", value=depth)
        yield GaugeMetricFamily("rapid_adapt_jobs_running", "adaptation jobs claimed by a worker", value=running)
        yield GaugeMetricFamily("rapid_adapt_adaptations_stored", "adaptations stored (kept on write)", value=stored)
        yield GaugeMetricFamily("rapid_adapt_workers_alive", "workers with a recent heartbeat", value=workers)
        upkeep = CounterMetricFamily(
            "rapid_adapt_upkeep_errors",
            "exceptions in the workers' heartbeat, reaper, top-up and sweeper",
            labels=["task"],
        )
        for task in ("heartbeat", "reaper", "top_up", "sweeper"):
            upkeep.add_metric([task], counts.get(f"upkeep_errors:{task}", 0.0))
        yield upkeep


def process_registry():
    """The registry of the HTTP metrics: every API process's together in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
