"""The adaptation store in Redis: records, support sets, idempotency keys, the
per-tenant index, job events, and the adapted weights (a cache that may evict).
Key names live in `keys`, byte formats in `codecs`. Which status a record may move
to, and who moves it, is the job lifecycle's (app/core/jobs/); `transition` is its
compare-and-set."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

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

# KEYS[1] record; ARGV[1] allowed current statuses (JSON list); ARGV[2..] field, value pairs.
# -> the status it had (JSON), or nil when the record is gone; the fields are set only when allowed.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
for _, allowed in ipairs(cjson.decode(ARGV[1])) do
  if cjson.decode(status) == allowed then
    redis.call('HSET', KEYS[1], unpack(ARGV, 2))
    return status
  end
end
return status
"""

# KEYS[1] record, KEYS[2] events; ARGV[1] the event. Appends it only while the job runs.
_STEP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == '"running"' then redis.call('RPUSHX', KEYS[2], ARGV[1]) end
return status
"""

# KEYS[1] the tenant's bytes (id -> bytes). -> their sum.
_SUM = """
local total = 0
local scores = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 2, #scores, 2 do total = total + tonumber(scores[i]) end
return tostring(total)
"""


class QuotaExceeded(Exception):
    """Over one of the tenant's limits: `limit` names the setting, `value` its value."""

    def __init__(self, limit: str, value: int, message: str, retry_after: int):
        super().__init__(message)
        self.limit, self.value, self.retry_after = limit, value, retry_after


class StorageFull(Exception):
    """The store's Redis is nearly at its memory limit: new adaptations would be refused by Redis."""


def connect(url: str, settings: Settings) -> redis.Redis:
    """A client with short timeouts: a Redis that is down answers 503 quickly."""
    t = settings.redis_timeout_seconds
    return redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t, health_check_interval=10)


def decode_record(raw: dict) -> dict:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Position:
    """Where a page of the listing ends: newest first is (created_ts, id) descending."""

    score: float
    aid: str


class Store:
    max_index_ttl = 30 * 24 * 3600

    def __init__(self, settings: Settings):
        self.r = connect(settings.redis_url, settings)
        self.cache = self.r if settings.weights_url == settings.redis_url else connect(settings.weights_url, settings)
        self._set_if_exists = self.r.register_script(_SET_IF_EXISTS)
        self._transition = self.r.register_script(_TRANSITION)
        self._sum = self.r.register_script(_SUM)
        self.settings = settings
        self._fill = (0.0, 0.0)  # (checked at, used / maxmemory)
        self._step = self.r.register_script(_STEP)

    # ---- adaptations -------------------------------------------------------
    def create(
        self,
        record: dict,
        support: dict[str, torch.Tensor],
        ttl: int,
        idempotency: tuple[str, str] | None = None,
        schedule: bool = True,
    ) -> tuple[str, bool]:
        """Store a new adaptation, counted among its tenant's jobs (unless `schedule` is false: a
        record written as already done, as the benchmark seeds them; `Jobs.submit` puts a job in
        line); with (key, fingerprint), a key seen
        before returns (existing id, False) instead. Raises ValueError if the key was used for
        another request, QuotaExceeded or StorageFull before anything is written."""
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
        self.prune(tenant)
        data = codecs.support_to_bytes(support)
        try:
            self.check_quotas(tenant, len(data))
        except (QuotaExceeded, StorageFull):
            if idempotency:
                self.r.delete(ikey)  # the key did not make an adaptation: a retry may
            raise
        p = self.r.pipeline(transaction=True)
        p.hset(keys.record(aid), mapping={k: json.dumps(v) for k, v in record.items()})
        p.expire(keys.record(aid), ttl)
        p.set(keys.support(aid), data, ex=ttl)
        p.zadd(keys.usage(tenant), {aid: len(data)})
        p.expire(keys.usage(tenant), self.max_index_ttl)
        if schedule:
            p.sadd(keys.jobs(tenant), aid)
        p.rpush(keys.events(aid), json.dumps(event("queued")))
        p.expire(keys.events(aid), ttl)
        p.incr(keys.COUNT)
        for index, score in (
            (keys.tenant_index(tenant), record["created_ts"]),
            (keys.expiries(tenant), time.time() + ttl),
        ):
            p.zadd(index, {aid: score})
            p.expire(index, self.max_index_ttl)
        p.execute()
        return aid, True

    def check_quotas(self, tenant: str, new_bytes: int) -> None:
        """Raises QuotaExceeded or StorageFull before a new adaptation is written."""
        s = self.settings
        if self.fill() >= s.store_max_fill:
            raise StorageFull("the store is nearly full; retry later")
        p = self.r.pipeline(transaction=False)
        p.zcard(keys.tenant_index(tenant))
        p.scard(keys.jobs(tenant))
        stored, jobs = p.execute()
        if stored >= s.tenant_max_adaptations:
            raise QuotaExceeded("tenant_max_adaptations", s.tenant_max_adaptations, "adaptations stored", 60)
        if jobs >= s.tenant_max_jobs:
            raise QuotaExceeded("tenant_max_jobs", s.tenant_max_jobs, "jobs queued or running", 5)
        if float(self._sum(keys=[keys.usage(tenant)])) + new_bytes > s.tenant_max_bytes:
            raise QuotaExceeded("tenant_max_bytes", s.tenant_max_bytes, "bytes of support sets and weights", 60)

    def fill(self) -> float:
        """used_memory / maxmemory of the store's Redis (0 without a maxmemory), read at most once a second."""
        checked, value = self._fill
        if time.monotonic() - checked > 1.0:
            info = self.r.info("memory")
            cap = int(info.get("maxmemory", 0))
            value = int(info["used_memory"]) / cap if cap else 0.0
            self._fill = (time.monotonic(), value)
        return value

    def get(self, aid: str) -> dict | None:
        raw = self.r.hgetall(keys.record(aid))
        return decode_record(raw) if raw else None

    def update(self, aid: str, **fields) -> bool:
        """Set fields of an existing record; False (and nothing written) if it is gone."""
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._set_if_exists(keys=[keys.record(aid)], args=args))

    def transition(self, aid: str, allowed: tuple[str, ...], **fields) -> str | None:
        """Set fields (a new status among them) only if the status is one of `allowed`;
        -> the status the record had, or None when it is gone."""
        args = [json.dumps(list(allowed))] + [x for k, v in fields.items() for x in (k, json.dumps(v))]
        had = self._transition(keys=[keys.record(aid)], args=args)
        return None if had is None else json.loads(had)

    def get_counted(self, aid: str, tenant: str, n: int) -> tuple[dict | None, int]:
        """A record, and the tenant's prediction images this second with these n counted
        (a fixed one-second window), in one round trip."""
        window = keys.rate(tenant, int(time.time()))
        p = self.r.pipeline(transaction=False)
        p.hgetall(keys.record(aid))
        p.incrby(window, n)
        p.expire(window, 2)
        raw, count, _ = p.execute()
        return (decode_record(raw) if raw else None), count

    def status(self, aid: str) -> str | None:
        raw = self.r.hget(keys.record(aid), "status")
        return None if raw is None else json.loads(raw)

    def ttl(self, aid: str) -> int:
        return max(int(self.r.ttl(keys.record(aid))), 1)

    def prune(self, tenant: str) -> None:
        """Drop expired adaptations from the tenant's index: it holds no dead ids."""
        expiries, index = keys.expiries(tenant), keys.tenant_index(tenant)
        dead = self.r.zrangebyscore(expiries, "-inf", time.time())
        if dead:
            p = self.r.pipeline(transaction=True)
            p.zrem(index, *dead)
            p.zrem(expiries, *dead)
            p.zrem(keys.usage(tenant), *dead)
            p.srem(keys.jobs(tenant), *dead)
            self._uncount(p.execute()[0])

    def prune_all(self) -> int:
        """Prune every tenant's index (the workers' sweep). -> how many tenants were looked at."""
        tenants = [k.decode().removeprefix(keys.expiries("")) for k in self.r.scan_iter(match=keys.expiries("*"))]
        for tenant in tenants:
            self.prune(tenant)
        return len(tenants)

    def page(
        self, tenant: str, limit: int, after: Position | None = None, match=lambda record: True
    ) -> tuple[list[dict], bool]:
        """A page of the tenant's adaptations, newest first, starting after `after`; records
        for which `match` is false are skipped. -> (records, whether more follow). Exact under
        concurrent inserts, deletes and expiry: it walks the index by (created_ts, id), never
        by position, and fetches on until the page is full or the index is exhausted."""
        self.prune(tenant)
        index, found, bound = keys.tenant_index(tenant), [], after
        chunk = limit + 1
        while len(found) <= limit:
            top = "+inf" if bound is None else repr(bound.score)
            fetched = self.r.zrevrangebyscore(index, top, "-inf", start=0, num=chunk, withscores=True)
            rows = [(m.decode(), s) for m, s in fetched]
            if bound is not None:  # ties on the score sort by id, descending
                rows = [(a, s) for a, s in rows if s < bound.score or a < bound.aid]
            if not rows:
                if len(fetched) < chunk or chunk >= 100_000:
                    break
                chunk *= 4  # a run of ties on the bound's score longer than the chunk: fetch past it
                continue
            p = self.r.pipeline(transaction=False)
            for aid, _ in rows:
                p.hgetall(keys.record(aid))
            for (aid, score), raw in zip(rows, p.execute()):
                bound = Position(score, aid)
                if raw and match(record := decode_record(raw)):
                    found.append(record)
                    if len(found) > limit:
                        break
            chunk = min(chunk * 2, 1000)
        return found[:limit], len(found) > limit

    def position(self, record: dict) -> Position:
        return Position(float(record["created_ts"]), record["id"])

    def delete(self, record: dict) -> None:
        aid = record["id"]
        p = self.r.pipeline(transaction=True)
        p.zrem(keys.tenant_index(record["tenant"]), aid)
        p.delete(keys.record(aid), keys.support(aid), keys.events(aid))
        p.zrem(keys.expiries(record["tenant"]), aid)
        p.zrem(keys.usage(record["tenant"]), aid)
        if record.get("idempotency_key"):
            p.delete(record["idempotency_key"])
        self._uncount(p.execute()[0])
        self.cache.delete(keys.weights(aid))

    def support(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.r.get(keys.support(aid))
        return codecs.bytes_to_support(data) if data else None

    def _uncount(self, removed: int) -> None:
        """Ids taken out of a tenant's index leave the count too: a delete and a prune of the same
        id cannot both remove it, so each stored adaptation is counted out once."""
        if removed:
            self.r.decrby(keys.COUNT, removed)

    def count_adaptations(self) -> int:
        """Adaptations stored: one key, kept on write (expired ones leave at the next prune or sweep)."""
        return max(0, int(self.r.get(keys.COUNT) or 0))

    # ---- events ------------------------------------------------------------
    def add_events(self, aid: str, *items: dict) -> None:
        """Append events to the job's list, if the adaptation still exists."""
        if items:
            p = self.r.pipeline(transaction=False)
            p.rpushx(keys.events(aid), *(json.dumps(e) for e in items))
            p.execute()

    def step(self, aid: str, item: dict) -> str | None:
        """A running job's step: append its event while the job still runs, and read the status
        (a cancel shows here) in one round trip. -> the status, None when the adaptation is gone."""
        raw = self._step(keys=[keys.record(aid), keys.events(aid)], args=[json.dumps(item)])
        return None if raw is None else json.loads(raw)

    def events(self, aid: str, start: int, limit: int) -> tuple[list[dict], bool]:
        raw = self.r.lrange(keys.events(aid), start, start + limit)
        items = [json.loads(e) | {"id": f"ev_{start + i}"} for i, e in enumerate(raw)]
        return items[:limit], len(items) > limit

    # ---- weights cache -----------------------------------------------------
    def put_weights(self, aid: str, fast: dict[str, torch.Tensor], ttl: int, tenant: str | None = None) -> int:
        """Write the weights; with the tenant, count their bytes against its quota."""
        data = codecs.tensors_to_bytes(fast)
        self.cache.set(keys.weights(aid), data, ex=ttl)
        if tenant is not None:
            self.r.zadd(keys.usage(tenant), {aid: len(data)}, xx=True, incr=True)
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


def event(kind: str, **data) -> dict:
    """One job event: its type, a UTC timestamp, and what it carries (a step's number and loss)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"type": kind, "created_at": stamp, **({"data": data} if data else {})}
