"""Finished jobs counted in Redis by the workers, so that every API process reports
the same figures on /metrics: jobs by final status, by tenant and base, and histograms of
their run, their wait in line and their whole life.

A job's end counts in the one bucket of its status that its duration falls in (`b:{status}:{le}`,
not cumulative; `+Inf` past the last) and in the sum; a job ended without a duration (cancelled)
counts `status:{status}`. Per tenant and base, `j:{tenant}:{model}:{status}` counts it (a tenant's
name has no colon, keys.TENANT); per base, `q:{model}:{le}`, `r:{model}:{le}` and `e:{model}:{le}`
(sums `q_sum:{model}`, ...) bucket the time from its creation to its start, its run, and the time
from its creation to its end (`per_model`). A worker tallies its jobs' ends in memory
(`Tally`) and writes them at most once a second, so a busy worker's many short jobs cost Redis a
few increments a second, not several a job; /metrics lags by that second. At scrape time
`finished` adds a status's buckets up, `cumulative` makes a histogram Prometheus's form, and
`per_job` reads the per-tenant counts. (Counts of earlier versions, `status:{status}` and
`b:{le}`, are added in.)"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections import Counter

import redis

from . import keys

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def bucket(seconds: float, buckets: tuple[float, ...] = DURATION_BUCKETS) -> str:
    """The le of the first bucket that holds `seconds`."""
    i = bisect.bisect_left(buckets, seconds)
    return str(buckets[i]) if i < len(buckets) else "+Inf"


def field(status: str, seconds: float | None) -> str:
    """The duration counter a job's end adds one to."""
    return f"status:{status}" if seconds is None else f"b:{status}:{bucket(seconds)}"


def fields(
    status: str,
    seconds: float | None,
    tenant: str | None = None,
    model: str | None = None,
    queued: float | None = None,
    end_to_end: float | None = None,
) -> tuple[Counter, Counter]:
    """What one job's end adds. -> (counters, sums)."""
    counts, sums = Counter({field(status, seconds): 1}), Counter({"duration_sum": seconds or 0.0})
    if tenant is not None:
        counts[f"j:{tenant}:{model or ''}:{status}"] += 1
    for prefix, value in (("q", queued), ("r", seconds), ("e", end_to_end)):
        if value is not None and tenant is not None:
            counts[f"{prefix}:{model or ''}:{bucket(max(value, 0.0), WAIT_BUCKETS)}"] += 1
            sums[f"{prefix}_sum:{model or ''}"] += max(value, 0.0)
    return counts, sums


def write(r: redis.Redis, counts: Counter, sums: Counter) -> None:
    p = r.pipeline(transaction=False)
    for name, n in counts.items():
        p.hincrby(keys.STATS, name, n)
    for name, x in sums.items():
        if x:
            p.hincrbyfloat(keys.STATS, name, x)
    p.execute()


def record_outcome(r: redis.Redis, status: str, seconds: float | None, **about) -> None:
    """One job's end, written at once (the API's cancels: rare). about: as `fields`."""
    write(r, *fields(status, seconds, **about))


class Tally:
    """A worker's job ends not yet in Redis: `add` writes them when the last write is a second
    old (the first at once), else a timer does when the second is up (a job runs in a pool
    process, where no upkeep turn comes); `flush` writes whatever is left (at shutdown)."""

    EVERY = 1.0

    def __init__(self, r: redis.Redis):
        self.r, self._counts, self._sums, self._flushed = r, Counter(), Counter(), None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def add(self, status: str, seconds: float | None, **about) -> None:
        """about: the job's tenant, model, queued and end_to_end seconds (`fields`)."""
        counts, sums = fields(status, seconds, **about)
        with self._lock:
            self._counts.update(counts)
            self._sums.update(sums)
            wait = 0.0 if self._flushed is None else self.EVERY - (time.monotonic() - self._flushed)
            if wait > 0 and self._timer is None:  # the rest within the second, even if no job follows
                self._timer = threading.Timer(wait, self._later)
                self._timer.daemon = True
                self._timer.start()
        if wait <= 0:
            self._later()

    def _later(self) -> None:
        with self._lock:
            self._timer = None
        with contextlib.suppress(redis.RedisError):  # kept: the next add or upkeep turn tries again
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, sums, self._counts, self._sums = self._counts, self._sums, Counter(), Counter()
            self._flushed = time.monotonic()
        if not counts:
            return
        try:
            write(self.r, counts, sums)
        except redis.RedisError:
            with self._lock:  # kept for the next try
                self._counts.update(counts)
                self._sums.update(sums)
            raise


def read(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(keys.STATS).items()}


def finished(counts: dict[str, float], status: str) -> float:
    """Jobs that ended with `status`."""
    return counts.get(f"status:{status}", 0.0) + sum(v for k, v in counts.items() if k.startswith(f"b:{status}:"))


def cumulative(counts: dict[str, float], prefix: str = "b:", buckets=DURATION_BUCKETS) -> list[tuple[str, float]]:
    """(le, jobs of at most le seconds) for each bucket, and +Inf: Prometheus's form, of the
    counters starting with prefix (b: the run, every status's)."""
    per_le: dict[str, float] = {}
    for k, v in counts.items():
        if k.startswith(prefix):
            le = k.rsplit(":", 1)[1]
            per_le[le] = per_le.get(le, 0.0) + v
    out, total = [], 0.0
    for le in buckets:
        total += per_le.get(str(le), 0.0)
        out.append((str(le), total))
    return out + [("+Inf", total + per_le.get("+Inf", 0.0))]


def per_model(counts: dict[str, float], prefix: str) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """A per-base histogram (prefix q, r or e): model -> (cumulative buckets, sum)."""
    models = {k[len(prefix) + 1 :].rsplit(":", 1)[0] for k in counts if k.startswith(prefix + ":")}
    out = {}
    for model in sorted(models):
        mine = {
            k: v
            for k, v in counts.items()
            if k.startswith(f"{prefix}:{model}:") and k.count(":") == model.count(":") + 2
        }
        out[model] = (cumulative(mine, f"{prefix}:", WAIT_BUCKETS), counts.get(f"{prefix}_sum:{model}", 0.0))
    return out


def per_job(counts: dict[str, float]) -> dict[tuple[str, str, str], float]:
    """(tenant, model, status) -> the jobs that ended so."""
    out = {}
    for k, v in counts.items():
        if k.startswith("j:"):
            tenant, rest = k[2:].split(":", 1)
            model, status = rest.rsplit(":", 1)
            out[(tenant, model, status)] = v
    return out
