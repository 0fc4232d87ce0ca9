"""Prometheus metrics of the API (served at /metrics). With several API processes
(`python -m app.serve --workers N`) they write to PROMETHEUS_MULTIPROC_DIR and /metrics
sums every process's, so that counters never go backwards between scrapes.

Two kinds: this process's (HTTP, predictions, quota refusals, the predictor lanes), and the
fleet's (`StoreCollector`: jobs, the backlog, workers, the store's memory), read from Redis at
scrape time, so every API process reports the same fleet figures: aggregate them across API
instances with max, not sum (deploy/monitoring/rules.yml does)."""

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

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
PREDICT_PASSES = Counter(
    "rapid_adapt_predict_passes_total", "prediction passes by torch threads (app/core/idle.py)", ["threads"]
)

QUOTA_REFUSALS = Counter(
    "rapid_adapt_quota_refusals_total", "requests refused 429 over a tenant's quota", ["tenant", "limit"]
)
LANE_WAITING = Gauge(
    "rapid_adapt_predictor_waiting", "prediction requests waiting for a lane", ["lane"], multiprocess_mode="livesum"
)


def tenant_label(settings, tenant: str | None) -> str:
    return (tenant or "unknown") if settings.metrics_tenant_label else "all"


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
            memory = self.store.memory()
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
        jobs = CounterMetricFamily(
            "rapid_adapt_jobs_finished",
            "adaptation jobs that ended, by tenant (all: METRICS_TENANT_LABEL off), base and final status",
            labels=["tenant", "model", "status"],
        )
        merged: dict[tuple[str, str, str], float] = {}
        for (tenant, model, status), n in stats.per_job(counts).items():
            key = (tenant_label(self.jobs.settings, tenant), model, status)
            merged[key] = merged.get(key, 0.0) + n
        for key, n in sorted(merged.items()):
            jobs.add_metric(list(key), n)
        yield jobs
        for name, what, prefix in (
            ("rapid_adapt_job_queued_seconds", "time from a job's creation to its start, by base", "q"),
            ("rapid_adapt_job_run_seconds", "a job's run on a worker, by base", "r"),
            ("rapid_adapt_job_end_to_end_seconds", "time from a job's creation to its end, by base", "e"),
        ):
            family = HistogramMetricFamily(name, what, labels=["model"])
            for model, (buckets, total) in stats.per_model(counts, prefix).items():
                family.add_metric([model], buckets, sum_value=total)
            yield family
        used = GaugeMetricFamily(
            "rapid_adapt_store_memory_bytes", "memory the store's Redis uses (each primary)", labels=["node"]
        )
        most = GaugeMetricFamily(
            "rapid_adapt_store_memory_limit_bytes", "the store Redis's maxmemory (0: none)", labels=["node"]
        )
        for i, (u, m) in enumerate(memory):
            used.add_metric([str(i)], u)
            most.add_metric([str(i)], m)
        yield used
        yield most
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
