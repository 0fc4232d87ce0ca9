"""Finished jobs counted in Redis by the workers, so that every API process reports
the same figures on /metrics: jobs by final status and a duration histogram."""

from __future__ import annotations

import redis

from . import keys

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def record_outcome(r: redis.Redis, status: str, seconds: float | None) -> None:
    p = r.pipeline(transaction=False)
    p.hincrby(keys.STATS, f"status:{status}", 1)
    if seconds is not None:
        for le in DURATION_BUCKETS:
            if seconds <= le:
                p.hincrby(keys.STATS, f"le:{le}", 1)
        p.hincrbyfloat(keys.STATS, "duration_sum", seconds)
        p.hincrby(keys.STATS, "duration_count", 1)
    p.execute()


def read(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(keys.STATS).items()}
