"""Worker heartbeats in Redis: each worker writes its time every few seconds;
readiness, metrics and the container health check count the recent ones."""

from __future__ import annotations

import time

import redis

from .. import keys


def beat(r: redis.Redis, worker: str) -> None:
    r.hset(keys.WORKERS, worker, time.time())


def alive(r: redis.Redis, within_seconds: float) -> list[str]:
    now = time.time()
    return [w.decode() for w, t in r.hgetall(keys.WORKERS).items() if now - float(t) <= within_seconds]


def forget(r: redis.Redis, worker: str) -> None:
    r.hdel(keys.WORKERS, worker)
