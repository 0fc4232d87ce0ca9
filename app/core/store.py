"""The adaptation store in Redis: records, support sets, idempotency keys, the
per-tenant index, and the adapted weights (a cache that may evict). Key names
live in `keys`, byte formats in `codecs`."""

from __future__ import annotations

import json

import redis
import torch

from . import codecs, keys
from .config import Settings

_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""


def connect(url: str, settings: Settings) -> redis.Redis:
    """A client with short timeouts: a Redis that is down answers 503 quickly."""
    t = settings.redis_timeout_seconds
    return redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t, health_check_interval=10)


def decode_record(raw: dict) -> dict:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


class Store:
    max_index_ttl = 30 * 24 * 3600

    def __init__(self, settings: Settings):
        self.r = connect(settings.redis_url, settings)
        self.cache = self.r if settings.weights_url == settings.redis_url else connect(settings.weights_url, settings)
        self._set_if_exists = self.r.register_script(_SET_IF_EXISTS)

    # ---- adaptations -------------------------------------------------------
    def create(
        self, record: dict, support: dict[str, torch.Tensor], ttl: int, idempotency: tuple[str, str] | None = None
    ) -> tuple[str, bool]:
        """Store a new adaptation; with (key, fingerprint), a key seen before returns
        (existing id, False) instead. Raises ValueError if the key was used for another request."""
        aid, tenant = record["id"], record["tenant"]
        if idempotency:
            key, fingerprint = idempotency
            ikey = keys.idempotency(tenant, key)
            if not self.r.set(ikey, f"{aid} {fingerprint}", nx=True, ex=ttl):
                found = (self.r.get(ikey) or b"").decode()
                old_id, _, old_fp = found.partition(" ")
                if old_fp != fingerprint:
                    raise ValueError("Idempotency-Key was already used with a different request")
                if self.r.exists(keys.record(old_id)):
                    return old_id, False
                self.r.set(ikey, f"{aid} {fingerprint}", ex=ttl)  # the earlier one was deleted: start anew
            record = record | {"idempotency_key": ikey}
        p = self.r.pipeline(transaction=True)
        p.hset(keys.record(aid), mapping={k: json.dumps(v) for k, v in record.items()})
        p.expire(keys.record(aid), ttl)
        p.set(keys.support(aid), codecs.support_to_bytes(support), ex=ttl)
        p.zadd(keys.tenant_index(tenant), {aid: record["created_ts"]})
        p.expire(keys.tenant_index(tenant), self.max_index_ttl)
        p.execute()
        return aid, True

    def get(self, aid: str) -> dict | None:
        raw = self.r.hgetall(keys.record(aid))
        return decode_record(raw) if raw else None

    def update(self, aid: str, **fields) -> bool:
        """Set fields of an existing record; False (and nothing written) if it is gone."""
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._set_if_exists(keys=[keys.record(aid)], args=args))

    def ttl(self, aid: str) -> int:
        return max(int(self.r.ttl(keys.record(aid))), 1)

    def list(self, tenant: str, offset: int, limit: int) -> tuple[list[dict], bool]:
        """The tenant's adaptations, newest first; also whether more follow."""
        index = keys.tenant_index(tenant)
        ids = [i.decode() for i in self.r.zrevrange(index, offset, offset + limit)]
        p = self.r.pipeline(transaction=False)
        for aid in ids:
            p.hgetall(keys.record(aid))
        records, gone = [], []
        for aid, raw in zip(ids, p.execute()):
            if raw:
                records.append(decode_record(raw))
            else:
                gone.append(aid)
        if gone:
            self.r.zrem(index, *gone)
        return records[:limit], len(ids) > limit

    def delete(self, record: dict) -> None:
        aid = record["id"]
        p = self.r.pipeline(transaction=True)
        p.delete(keys.record(aid), keys.support(aid))
        p.zrem(keys.tenant_index(record["tenant"]), aid)
        if record.get("idempotency_key"):
            p.delete(record["idempotency_key"])
        p.execute()
        self.cache.delete(keys.weights(aid))

    def support(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.r.get(keys.support(aid))
        return codecs.bytes_to_support(data) if data else None

    def count_adaptations(self, cap: int = 1_000_000) -> int:
        n = 0
        for _ in self.r.scan_iter(match=keys.record("*"), count=1000):
            n += 1
            if n >= cap:
                break
        return n

    # ---- weights cache -----------------------------------------------------
    def put_weights(self, aid: str, fast: dict[str, torch.Tensor], ttl: int) -> int:
        data = codecs.tensors_to_bytes(fast)
        self.cache.set(keys.weights(aid), data, ex=ttl)
        return len(data)

    def weights(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.cache.get(keys.weights(aid))
        return codecs.bytes_to_tensors(data) if data else None

    def drop_weights(self, aid: str) -> None:
        self.cache.delete(keys.weights(aid))

    def ping(self) -> None:
        self.r.ping()
        if self.cache is not self.r:
            self.cache.ping()
