"""The one module that owns every Redis key of Rapid Adapt.

Durable store (settings.redis_url, must not evict), every key with the
adaptation's TTL:
  ra:a:{id}               hash: the adaptation record, each field JSON-encoded
  ra:s:{id}               support set as safetensors bytes {x, y}; images as
                          their 8-bit gray levels {x_levels, y}, a quarter of the bytes
  ra:idem:{tenant}:{key}  "{id} {request fingerprint}" for Idempotency-Key
  ra:t:{tenant}           sorted set of the tenant's ids by creation time
  ra:workers              hash: worker name -> last heartbeat (unix seconds)
Weights cache (settings.weights_url, may evict):
  ra:w:{id}               the adapted tensors as safetensors bytes
Tensors travel as safetensors only: nothing here is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import time

import redis
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.preprocess import from_levels, to_levels

from .settings import Settings

_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def bytes_to_tensors(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


def support_to_bytes(support: dict[str, torch.Tensor]) -> bytes:
    levels = to_levels(support["x"])
    return tensors_to_bytes(support if levels is None else {"x_levels": levels, "y": support["y"]})


def bytes_to_support(data: bytes) -> dict[str, torch.Tensor]:
    t = bytes_to_tensors(data)
    return {"x": from_levels(t["x_levels"]), "y": t["y"]} if "x_levels" in t else t


def _client(url: str, settings: Settings) -> redis.Redis:
    t = settings.redis_timeout_seconds
    return redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t, health_check_interval=10)


class Store:
    def __init__(self, settings: Settings):
        self.r = _client(settings.redis_url, settings)
        self.cache = self.r if settings.weights_url == settings.redis_url else _client(settings.weights_url, settings)
        self._set_if_exists = self.r.register_script(_SET_IF_EXISTS)

    # ---- adaptations -------------------------------------------------------
    def create(self, record: dict, support: dict[str, torch.Tensor], ttl: int,
               idempotency: tuple[str, str] | None = None) -> tuple[str, bool]:
        """Store a new adaptation; with (key, fingerprint), a key seen before returns
        (existing id, False) instead. Raises ValueError if the key was used for another request."""
        aid, tenant = record["id"], record["tenant"]
        if idempotency:
            key, fingerprint = idempotency
            ikey = f"ra:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
            if not self.r.set(ikey, f"{aid} {fingerprint}", nx=True, ex=ttl):
                found = (self.r.get(ikey) or b"").decode()
                old_id, _, old_fp = found.partition(" ")
                if old_fp != fingerprint:
                    raise ValueError("Idempotency-Key was already used with a different request")
                if self.r.exists(f"ra:a:{old_id}"):
                    return old_id, False
                self.r.set(ikey, f"{aid} {fingerprint}", ex=ttl)  # the earlier one was deleted: start anew
            record = record | {"idempotency_key": ikey}
        p = self.r.pipeline(transaction=True)
        p.hset(f"ra:a:{aid}", mapping={k: json.dumps(v) for k, v in record.items()})
        p.expire(f"ra:a:{aid}", ttl)
        p.set(f"ra:s:{aid}", support_to_bytes(support), ex=ttl)
        p.zadd(f"ra:t:{tenant}", {aid: record["created_ts"]})
        p.expire(f"ra:t:{tenant}", self.max_index_ttl)
        p.execute()
        return aid, True

    max_index_ttl = 30 * 24 * 3600

    def get(self, aid: str) -> dict | None:
        raw = self.r.hgetall(f"ra:a:{aid}")
        return {k.decode(): json.loads(v) for k, v in raw.items()} if raw else None

    def update(self, aid: str, **fields) -> bool:
        """Set fields of an existing record; False (and nothing written) if it is gone."""
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._set_if_exists(keys=[f"ra:a:{aid}"], args=args))

    def ttl(self, aid: str) -> int:
        return max(int(self.r.ttl(f"ra:a:{aid}")), 1)

    def list(self, tenant: str, offset: int, limit: int) -> tuple[list[dict], bool]:
        """The tenant's adaptations, newest first; also whether more follow."""
        ids = [i.decode() for i in self.r.zrevrange(f"ra:t:{tenant}", offset, offset + limit)]
        p = self.r.pipeline(transaction=False)
        for aid in ids:
            p.hgetall(f"ra:a:{aid}")
        records, gone = [], []
        for aid, raw in zip(ids, p.execute()):
            if raw:
                records.append({k.decode(): json.loads(v) for k, v in raw.items()})
            else:
                gone.append(aid)
        if gone:
            self.r.zrem(f"ra:t:{tenant}", *gone)
        return records[:limit], len(ids) > limit

    def delete(self, record: dict) -> None:
        aid = record["id"]
        p = self.r.pipeline(transaction=True)
        p.delete(f"ra:a:{aid}", f"ra:s:{aid}")
        p.zrem(f"ra:t:{record['tenant']}", aid)
        if record.get("idempotency_key"):
            p.delete(record["idempotency_key"])
        p.execute()
        self.cache.delete(f"ra:w:{aid}")

    def support(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.r.get(f"ra:s:{aid}")
        return bytes_to_support(data) if data else None

    # ---- weights cache -----------------------------------------------------
    def put_weights(self, aid: str, fast: dict[str, torch.Tensor], ttl: int) -> int:
        data = tensors_to_bytes(fast)
        self.cache.set(f"ra:w:{aid}", data, ex=ttl)
        return len(data)

    def weights(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.cache.get(f"ra:w:{aid}")
        return bytes_to_tensors(data) if data else None

    def drop_weights(self, aid: str) -> None:
        self.cache.delete(f"ra:w:{aid}")

    # ---- statistics for /metrics ---------------------------------------------
    DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def record_outcome(self, status: str, seconds: float | None) -> None:
        """Count a finished job (and its duration histogram) for every API process to report."""
        p = self.r.pipeline(transaction=False)
        p.hincrby("ra:stats", f"status:{status}", 1)
        if seconds is not None:
            for le in self.DURATION_BUCKETS:
                if seconds <= le:
                    p.hincrby("ra:stats", f"le:{le}", 1)
            p.hincrbyfloat("ra:stats", "duration_sum", seconds)
            p.hincrby("ra:stats", "duration_count", 1)
        p.execute()

    def stats(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.r.hgetall("ra:stats").items()}

    def count_adaptations(self, cap: int = 1_000_000) -> int:
        n = 0
        for _ in self.r.scan_iter(match="ra:a:*", count=1000):
            n += 1
            if n >= cap:
                break
        return n

    # ---- health ------------------------------------------------------------
    def ping(self) -> None:
        self.r.ping()
        if self.cache is not self.r:
            self.cache.ping()

    def heartbeat(self, worker: str) -> None:
        self.r.hset("ra:workers", worker, time.time())

    def workers_alive(self, within_seconds: float) -> list[str]:
        now = time.time()
        return [w.decode() for w, t in self.r.hgetall("ra:workers").items() if now - float(t) <= within_seconds]

    def forget_worker(self, worker: str) -> None:
        self.r.hdel("ra:workers", worker)
