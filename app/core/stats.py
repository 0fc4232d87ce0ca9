"""Finished jobs counted in Redis by the workers, so that every API process reports
the same figures on /metrics: jobs by final status and a duration histogram.

A job's end costs two increments whatever its duration: the one bucket of its status that its
duration falls in (`b:{status}:{le}`, not cumulative; `+Inf` past the last) and the sum; a job
ended without a duration (cancelled) counts `status:{status}`. At scrape time `finished` adds a
status's buckets up, and `cumulative` every status's, for Prometheus. (Counts of earlier
versions, `status:{status}` and `b:{le}`, are added in.)"""

from __future__ import annotations

import bisect

import redis

from . import keys

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def record_outcome(r: redis.Redis, status: str, seconds: float | None) -> None:
    if seconds is None:
        r.hincrby(keys.STATS, f"status:{status}", 1)
        return
    i = bisect.bisect_left(DURATION_BUCKETS, seconds)  # the first bucket with seconds <= le
    p = r.pipeline(transaction=False)
    p.hincrby(keys.STATS, f"b:{status}:{DURATION_BUCKETS[i] if i < len(DURATION_BUCKETS) else '+Inf'}", 1)
    p.hincrbyfloat(keys.STATS, "duration_sum", seconds)
    p.execute()


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
