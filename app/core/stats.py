"""Finished jobs counted in Redis by the workers, so that every API process reports
the same figures on /metrics: jobs by final status and a duration histogram.

A job's end costs three increments whatever its duration: its status, the one bucket its
duration falls in (`b:{le}`, not cumulative; `b:+Inf` past the last) and the sum;
`cumulative` adds the buckets up for Prometheus at scrape time, the count among them."""

from __future__ import annotations

import bisect

import redis

from . import keys

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def record_outcome(r: redis.Redis, status: str, seconds: float | None) -> None:
    p = r.pipeline(transaction=False)
    p.hincrby(keys.STATS, f"status:{status}", 1)
    if seconds is not None:
        i = bisect.bisect_left(DURATION_BUCKETS, seconds)  # the first bucket with seconds <= le
        p.hincrby(keys.STATS, f"b:{DURATION_BUCKETS[i] if i < len(DURATION_BUCKETS) else '+Inf'}", 1)
        p.hincrbyfloat(keys.STATS, "duration_sum", seconds)
    p.execute()


def read(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(keys.STATS).items()}


def cumulative(counts: dict[str, float]) -> list[tuple[str, float]]:
    """(le, jobs with a duration of at most le) for each bucket, and +Inf: Prometheus's form."""
    out, total = [], 0.0
    for le in DURATION_BUCKETS:
        total += counts.get(f"b:{le}", 0.0)
        out.append((str(le), total))
    return out + [("+Inf", total + counts.get("b:+Inf", 0.0))]
