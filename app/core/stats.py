"""Finished jobs counted in Redis by the workers, so that every API process reports
the same figures on /metrics: jobs by final status and a duration histogram.

A job's end counts in the one bucket of its status that its duration falls in (`b:{status}:{le}`,
not cumulative; `+Inf` past the last) and in the sum; a job ended without a duration (cancelled)
counts `status:{status}`. A worker tallies its jobs' ends in memory (`Tally`) and writes them at
most once a second and at each upkeep turn, so a busy worker's many short jobs cost Redis a few
increments a second, not two a job; /metrics lags by that second. At scrape time `finished` adds a
status's buckets up, and `cumulative` every status's, for Prometheus. (Counts of earlier
versions, `status:{status}` and `b:{le}`, are added in.)"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections import Counter

import redis

from . import keys

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def field(status: str, seconds: float | None) -> str:
    """The counter a job's end adds one to."""
    if seconds is None:
        return f"status:{status}"
    i = bisect.bisect_left(DURATION_BUCKETS, seconds)  # the first bucket with seconds <= le
    return f"b:{status}:{DURATION_BUCKETS[i] if i < len(DURATION_BUCKETS) else '+Inf'}"


def record_outcome(r: redis.Redis, status: str, seconds: float | None) -> None:
    """One job's end, written at once (the API's cancels: rare)."""
    p = r.pipeline(transaction=False)
    p.hincrby(keys.STATS, field(status, seconds), 1)
    if seconds is not None:
        p.hincrbyfloat(keys.STATS, "duration_sum", seconds)
    p.execute()


class Tally:
    """A worker's job ends not yet in Redis: `add` writes them when the last write is a second
    old (the first at once), else a timer does when the second is up (a job runs in a pool
    process, where no upkeep turn comes); `flush` writes whatever is left (at shutdown)."""

    EVERY = 1.0

    def __init__(self, r: redis.Redis):
        self.r, self._counts, self._sum, self._flushed = r, Counter(), 0.0, None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def add(self, status: str, seconds: float | None) -> None:
        with self._lock:
            self._counts[field(status, seconds)] += 1
            self._sum += seconds or 0.0
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
            counts, total, self._counts, self._sum = self._counts, self._sum, Counter(), 0.0
            self._flushed = time.monotonic()
        if not counts:
            return
        try:
            p = self.r.pipeline(transaction=False)
            for name, n in counts.items():
                p.hincrby(keys.STATS, name, n)
            if total:
                p.hincrbyfloat(keys.STATS, "duration_sum", total)
            p.execute()
        except redis.RedisError:
            with self._lock:  # kept for the next try
                self._counts.update(counts)
                self._sum += total
            raise


def read(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(keys.STATS).items()}


def finished(counts: dict[str, float], status: str) -> float:
    """Jobs that ended with `status`."""
    return counts.get(f"status:{status}", 0.0) + sum(v for k, v in counts.items() if k.startswith(f"b:{status}:"))


def cumulative(counts: dict[str, float]) -> list[tuple[str, float]]:
    """(le, jobs with a duration of at most le) for each bucket, and +Inf: Prometheus's form."""
    per_le: dict[str, float] = {}
    for k, v in counts.items():
        if k.startswith("b:"):
            le = k.rsplit(":", 1)[1]
            per_le[le] = per_le.get(le, 0.0) + v
    out, total = [], 0.0
    for le in DURATION_BUCKETS:
        total += per_le.get(str(le), 0.0)
        out.append((str(le), total))
    return out + [("+Inf", total + per_le.get("+Inf", 0.0))]
