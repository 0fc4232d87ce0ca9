"""The adaptation store in Redis: records, support sets, idempotency keys, the
per-tenant index, job events, and the adapted weights (a cache that may evict).
Key names live in `keys`, byte formats in `codecs`. Which status a record may move
to, and who moves it, is the job lifecycle's (app/core/jobs/); `transition` is its
compare-and-set."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis
import torch

from . import codecs, keys
from .config import Settings
from .migrate import migrate

log = logging.getLogger("rapid_adapt.store")

_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""

# Lua functions for the scripts below: what these keys hold in Redis's memory (MEMORY USAGE, a
# record's every field counted; a missing key 0), and charging a tenant for it. Charging what Redis
# reports, not what was sent, counts an encoding's overhead too: the byte quota is what a tenant
# costs the store. A create charges what it wrote; a job's end what its record and events grew by.
_BYTES_FUNCTION = """
local function bytes(...)
  local n = 0
  for _, key in ipairs({...}) do n = n + (redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0) end
  return n
end
local function charge(usage, total, aid, n)
  if n ~= 0 and redis.call('ZADD', usage, 'XX', 'INCR', n, aid) then redis.call('INCRBY', total, n) end
end
"""

# KEYS: record, events, the tenant's usage and its total; ARGV[1] allowed current statuses (JSON
# list), ARGV[2] a channel to publish the id ARGV[3] on ('' for none: a final status publishes, and
# settles), ARGV[4] bytes to charge the tenant for besides (its weights, in the cache), ARGV[5] n, then
# n events, then field, value pairs. -> the status it had (JSON), or nil when the record is gone; the
# fields are set, the events appended, the notice published and the bytes charged only when allowed.
# Settling charges what the record and events grew by since they were last charged (`held_bytes`,
# written by the create): one measure at the job's end instead of one at every step.
_TRANSITION = (
    _BYTES_FUNCTION
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
local n = tonumber(ARGV[5])
for _, allowed in ipairs(cjson.decode(ARGV[1])) do
  if cjson.decode(status) == allowed then
    redis.call('HSET', KEYS[1], unpack(ARGV, 6 + n))
    if n > 0 then redis.call('RPUSHX', KEYS[2], unpack(ARGV, 6, 5 + n)) end
    local grew = 0
    if ARGV[2] ~= '' then
      local held = bytes(KEYS[1], KEYS[2])
      grew = held - tonumber(redis.call('HGET', KEYS[1], 'held_bytes') or held)
      redis.call('HSET', KEYS[1], 'held_bytes', held)
      redis.call('PUBLISH', ARGV[2], ARGV[3])
    end
    charge(KEYS[3], KEYS[4], ARGV[3], grew + tonumber(ARGV[4]))
    return status
  end
end
return status
"""
)

# KEYS[1] record, KEYS[2] events; ARGV: events. Appends them only while the job runs (their
# bytes are charged when the job ends: _TRANSITION settles).
_STEP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == '"running"' then redis.call('RPUSHX', KEYS[2], unpack(ARGV)) end
return status
"""

# A Lua function for the scripts below: drop the tenant's expired ids (1000 at most) from its
# indexes and give their bytes back. -> how many it dropped.
_PRUNE_FUNCTION = """
local function prune(index, expiries, usage, total, jobs, now)
  local dead = redis.call('ZRANGEBYSCORE', expiries, '-inf', now, 'LIMIT', 0, 1000)
  if #dead == 0 then return 0 end
  local freed = 0
  for _, b in ipairs(redis.call('ZMSCORE', usage, unpack(dead))) do freed = freed + (tonumber(b) or 0) end
  redis.call('ZREM', index, unpack(dead))
  redis.call('ZREM', expiries, unpack(dead))
  redis.call('ZREM', usage, unpack(dead))
  if redis.call('DECRBY', total, freed) <= 0 then redis.call('DEL', total) end
  redis.call('SREM', jobs, unpack(dead))
  return #dead
end
"""

# Check the tenant's quotas (over one, first prune its expired ids and check again), then write
# a new adaptation, all in one slot and at once (two creates cannot both pass the last quota),
# and charge what it holds: its keys' MEMORY USAGE and its entries in the indexes.
# KEYS: record, support, events, index, expiries, usage, usage total, jobs, the idempotency key
#       (or the record again), then the metadata indexes of its key=value pairs.
# ARGV: now, id, ttl, created_ts, expires (unix), bytes it will take (about), schedule (1/0), max
#       adaptations, max jobs, max bytes, the first event, the support bytes, bytes of its index
#       entries, then the record's field, value pairs.
# -> the limit that refused it, or '' when written
_CREATE = (
    _PRUNE_FUNCTION
    + _BYTES_FUNCTION
    + """
local function over()
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[8]) then return 'tenant_max_adaptations' end
  if ARGV[7] == '1' and redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[9]) then return 'tenant_max_jobs' end
  if tonumber(redis.call('GET', KEYS[7]) or '0') + tonumber(ARGV[6]) > tonumber(ARGV[10]) then
    return 'tenant_max_bytes'
  end
  return nil
end
local refused = over()
if refused and prune(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[1]) > 0 then refused = over() end
if refused then return refused end
local aid, ttl = ARGV[2], tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 14))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[12], 'EX', ttl)
redis.call('RPUSH', KEYS[3], ARGV[11])
redis.call('EXPIRE', KEYS[3], ttl)
local live = bytes(KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], 'held_bytes', live)
local held = live + bytes(KEYS[2]) + tonumber(ARGV[13])
if KEYS[9] ~= KEYS[1] then held = held + bytes(KEYS[9]) end
redis.call('ZADD', KEYS[4], ARGV[4], aid)
redis.call('ZADD', KEYS[5], ARGV[5], aid)
for i = 10, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[4], aid)
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('ZADD', KEYS[6], held, aid)
redis.call('INCRBY', KEYS[7], held)
if ARGV[7] == '1' then redis.call('SADD', KEYS[8], aid) end
return ''
"""
)

# KEYS: index, expiries, usage, usage total, jobs; ARGV: now. -> how many expired ids it dropped.
_PRUNE = _PRUNE_FUNCTION + "return prune(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1])"

# KEYS: record, support, events, index, expiries, usage, usage total, the idempotency key (or the
# record again), then its metadata indexes; ARGV: id. Everything of one adaptation gone, its bytes
# given back.
_DELETE = """
local freed = tonumber(redis.call('ZSCORE', KEYS[6], ARGV[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[8])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
for i = 9, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if redis.call('ZREM', KEYS[6], ARGV[1]) == 1 and redis.call('DECRBY', KEYS[7], freed) <= 0 then
  redis.call('DEL', KEYS[7])
end
return 1
"""

# what one adaptation's id costs in its tenant's three sorted sets (index, expiries, usage): the
# id, its score and the set's own bookkeeping, about 100 bytes each once a set is past 128 members;
# and in each metadata index (keys.metadata_index), often a set of its own: a key, its expiry, one member
INDEX_BYTES = 300
METADATA_INDEX_BYTES = 160


LIMITS = {
    "tenant_max_adaptations": ("adaptations stored", 60),
    "tenant_max_jobs": ("jobs queued or running", 5),
    "tenant_max_bytes": ("bytes stored (records, events, support sets, weights)", 60),
}


class QuotaExceeded(Exception):
    """Over one of the tenant's limits: `limit` names the setting, `value` its value."""

    def __init__(self, limit: str, value: int, message: str, retry_after: int):
        super().__init__(message)
        self.limit, self.value, self.retry_after = limit, value, retry_after


class StorageFull(Exception):
    """The store's Redis is nearly at its memory limit: new adaptations would be refused by Redis."""


def connect(url: str, settings: Settings) -> redis.Redis:
    """A client with short timeouts: a Redis that is down answers 503 quickly. With
    RAPID_ADAPT_REDIS_CLUSTER=on, `url` names one node of a Redis Cluster; the client finds
    the rest and follows failovers."""
    t = settings.redis_timeout_seconds
    if settings.redis_cluster == "on":
        return redis.RedisCluster.from_url(url, socket_timeout=t, socket_connect_timeout=t)
    return redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t, health_check_interval=10)


def decode_record(raw: dict) -> dict:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Position:
    """Where a page of the listing ends: newest first is (created_ts, id) descending."""

    score: float
    aid: str


class Store:
    def __init__(self, settings: Settings):
        self.r = connect(settings.redis_url, settings)
        self.cache = self.r if settings.weights_url == settings.redis_url else connect(settings.weights_url, settings)
        self._set_if_exists = self.r.register_script(_SET_IF_EXISTS)
        self._transition = self.r.register_script(_TRANSITION)
        self._create = self.r.register_script(_CREATE)
        self._prune = self.r.register_script(_PRUNE)
        self._delete = self.r.register_script(_DELETE)
        self._step = self.r.register_script(_STEP)
        self.settings = settings
        self._fill = (0.0, 0.0)  # (checked at, used / maxmemory)
        self._refused: dict[str, float] = {}  # tenant -> when this process last saw it over a quota

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
        line); with (key, fingerprint), a key seen before returns (existing id, False) instead.
        Raises ValueError if the key was used for another request, QuotaExceeded or StorageFull
        before anything is written."""
        aid, tenant = record["id"], record["tenant"]
        if idempotency:
            key, fingerprint = idempotency
            ikey = keys.idempotency(tenant, key)
            if not self.r.set(ikey, f"{aid} {fingerprint}", nx=True, ex=ttl):
                found = (self.r.get(ikey) or b"").decode()
                old_id, _, old_fp = found.partition(" ")
                if old_fp != fingerprint:
                    raise ValueError("Idempotency-Key was already used with a different request")
                if self.r.exists(keys.record(tenant, old_id)):
                    return old_id, False
                self.r.set(ikey, f"{aid} {fingerprint}", ex=ttl)  # the earlier one was deleted: start anew
            record = record | {"idempotency_key": ikey}
        data = codecs.support_to_bytes(support)
        try:
            if self.fill() >= self.settings.store_max_fill:
                raise StorageFull("the store is nearly full; retry later")
            s, now = self.settings, time.time()
            fields = [x for k, v in record.items() for x in (k, json.dumps(v, ensure_ascii=False))]
            indexed = INDEX_BYTES + METADATA_INDEX_BYTES * len(record.get("metadata") or {})
            about = len(data) + sum(len(f.encode()) for f in fields) + indexed
            refused = self._create(
                keys=[
                    keys.record(tenant, aid),
                    keys.support(tenant, aid),
                    keys.events(tenant, aid),
                    keys.tenant_index(tenant),
                    keys.expiries(tenant),
                    keys.usage(tenant),
                    keys.usage_total(tenant),
                    keys.jobs(tenant),
                    ikey if idempotency else keys.record(tenant, aid),
                    *keys.metadata_indexes(record),
                ],
                args=[now, aid, ttl, record["created_ts"], now + ttl, about, int(schedule)]
                + [s.tenant_max_adaptations, s.tenant_max_jobs, s.tenant_max_bytes]
                + [json.dumps(event("queued")), data, indexed, *fields],
            )
            if refused:
                self._refused[tenant] = time.monotonic()
                raise self._exceeded(refused.decode())
        except (QuotaExceeded, StorageFull):
            if idempotency:
                self.r.delete(ikey)  # the key did not make an adaptation: a retry may
            raise
        return aid, True

    def _exceeded(self, limit: str) -> QuotaExceeded:
        what, retry = LIMITS[limit]
        return QuotaExceeded(limit, getattr(self.settings, limit), what, retry)

    def check_quotas(self, tenant: str) -> None:
        """A cheap early refusal, before a request's images are decoded: for a tenant this process
        saw over a quota in the last 5 s, the quotas are read again (create checks them anyway,
        atomically with the write)."""
        if self.fill() >= self.settings.store_max_fill:
            raise StorageFull("the store is nearly full; retry later")
        if time.monotonic() - self._refused.get(tenant, -60.0) > 5.0:
            return
        s = self.settings
        p = self.r.pipeline(transaction=False)
        p.zcard(keys.tenant_index(tenant))
        p.scard(keys.jobs(tenant))
        p.get(keys.usage_total(tenant))
        stored, jobs, usage = p.execute()
        for limit, used in (
            ("tenant_max_adaptations", stored),
            ("tenant_max_jobs", jobs),
            ("tenant_max_bytes", int(usage or 0)),
        ):
            if used >= getattr(s, limit):
                raise self._exceeded(limit)
        self._refused.pop(tenant, None)

    def fill(self) -> float:
        """used_memory / maxmemory of the store's Redis (0 without a maxmemory), read at most once a
        second; on a cluster, of its fullest primary."""
        checked, value = self._fill
        if time.monotonic() - checked > 1.0:
            if isinstance(self.r, redis.RedisCluster):
                nodes = self.r.info("memory", target_nodes=redis.RedisCluster.PRIMARIES).values()
            else:
                nodes = [self.r.info("memory")]
            value = max(int(n["used_memory"]) / int(n["maxmemory"]) if int(n["maxmemory"]) else 0.0 for n in nodes)
            self._fill = (time.monotonic(), value)
        return value

    def get(self, tenant: str, aid: str) -> dict | None:
        raw = self.r.hgetall(keys.record(tenant, aid))
        return decode_record(raw) if raw else None

    def update(self, tenant: str, aid: str, **fields) -> bool:
        """Set fields of an existing record; False (and nothing written) if it is gone."""
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._set_if_exists(keys=[keys.record(tenant, aid)], args=args))

    def transition(
        self,
        tenant: str,
        aid: str,
        allowed: tuple[str, ...],
        events: list[dict] = (),
        replicas: int = 0,
        notice: bool = False,
        charge: int = 0,
        **fields,
    ) -> str | None:
        """Set fields (a new status among them) and append `events` only if the status is one of
        `allowed`, and with `notice` publish the id on keys.DONE (a final status: requests waiting
        for it are told, app/api/notices.py), and add `charge` bytes (its weights) to the tenant's
        usage. -> the status the record had, or None when it is gone. With `replicas`, the call
        returns once that many replicas hold this write and every one before it on its primary
        (Redis's WAIT, on the same connection), or after `store_replica_wait_ms` (logged)."""
        ks = [keys.record(tenant, aid), keys.events(tenant, aid), keys.usage(tenant), keys.usage_total(tenant)]
        args = [json.dumps(list(allowed)), keys.DONE if notice else "", aid, charge, len(events)]
        args += [json.dumps(e) for e in events]
        args += [x for k, v in fields.items() for x in (k, json.dumps(v))]
        if not replicas:
            had = self._transition(keys=ks, args=args)
        else:
            had, acked = self._replicated(ks, args, replicas)
            if acked < replicas:
                log.warning("write not replicated in time", extra={"adaptation_id": aid, "replicas": acked})
        return None if had is None else json.loads(had)

    def _replicated(self, ks: list[str], args: list, replicas: int) -> tuple[bytes | None, int]:
        """The transition and a WAIT in one pipeline on one connection to the key's primary
        (WAIT counts the replicas that hold what this connection wrote). A cluster in the middle
        of a failover answers MOVED: raised as a ConnectionError, so the job is tried again."""
        node = self.r.get_node_from_key(ks[0]).redis_connection if isinstance(self.r, redis.RedisCluster) else self.r
        p = node.pipeline(transaction=False)
        p.eval(_TRANSITION, len(ks), *ks, *args)
        p.execute_command("WAIT", replicas, self.settings.store_replica_wait_ms)
        try:
            had, acked = p.execute()
        except redis.ResponseError as exc:
            if str(exc).split(" ")[0] in ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY"):
                raise redis.ConnectionError(f"the store is failing over: {exc}") from exc
            raise
        return had, int(acked)

    def get_counted(self, tenant: str, aid: str, n: int) -> tuple[dict | None, int]:
        """A record, and the tenant's prediction images this second with these n counted
        (a fixed one-second window), in one round trip."""
        window = keys.rate(tenant, int(time.time()))
        p = self.r.pipeline(transaction=False)
        p.hgetall(keys.record(tenant, aid))
        p.incrby(window, n)
        p.expire(window, 2)
        raw, count, _ = p.execute()
        return (decode_record(raw) if raw else None), count

    def status(self, tenant: str, aid: str) -> str | None:
        raw = self.r.hget(keys.record(tenant, aid), "status")
        return None if raw is None else json.loads(raw)

    def prune(self, tenant: str) -> None:
        """Drop expired adaptations from the tenant's indexes: they hold no dead ids."""
        ks = [keys.tenant_index(tenant), keys.expiries(tenant), keys.usage(tenant), keys.usage_total(tenant)]
        ks.append(keys.jobs(tenant))
        while self._prune(keys=ks, args=[time.time()]) == 1000:
            pass

    def prune_all(self) -> int:
        """Prune every tenant's index (the workers' sweep). -> how many tenants were looked at."""
        found = {keys.tenant_of(k.decode()) for k in self.r.scan_iter(match=keys.expiries("*"), count=1000)}
        for tenant in found:
            self.prune(tenant)
        return len(found)

    def page(
        self,
        tenant: str,
        limit: int,
        after: Position | None = None,
        metadata: dict[str, str] | None = None,
        max_scan: int = 1000,
    ) -> tuple[list[dict], Position | None]:
        """A page of the tenant's adaptations, newest first, starting after `after`, only those
        whose metadata holds every pair of `metadata`. -> (records, where the next page starts:
        None at the end). Exact under concurrent inserts, deletes and expiry: it walks an index by
        (created_ts, id), never by position: the tenant's, or with a filter the index of its first
        pair (the other pairs checked on each record). It fetches on until the page is full, the
        index is exhausted, or `max_scan` records were read: a filter of several pairs that match
        few then ends a short page with a position to go on from, so no request reads a tenant's
        whole store."""
        self.prune(tenant)
        wanted = metadata or {}
        match = lambda record: all(record.get("metadata", {}).get(k) == v for k, v in wanted.items())
        index = keys.metadata_index(tenant, *next(iter(wanted.items()))) if wanted else keys.tenant_index(tenant)
        found, bound, scanned = [], after, 0
        chunk = limit + 1
        while len(found) <= limit:
            if scanned >= max_scan:
                return found, bound
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
            rows = rows[: max_scan - scanned]
            p = self.r.pipeline(transaction=False)
            for aid, _ in rows:
                p.hgetall(keys.record(tenant, aid))
            raws = p.execute()
            if gone := [aid for (aid, _), raw in zip(rows, raws) if not raw and wanted]:
                self.r.zrem(index, *gone)  # expired or deleted since: a metadata index is not pruned
            for (aid, score), raw in zip(rows, raws):
                bound, scanned = Position(score, aid), scanned + 1
                if raw and match(record := decode_record(raw)):
                    found.append(record)
                    if len(found) > limit:
                        break
            chunk = min(chunk * 2, 1000)
        return found[:limit], (self.position(found[limit - 1]) if len(found) > limit else None)

    def position(self, record: dict) -> Position:
        return Position(float(record["created_ts"]), record["id"])

    def delete(self, record: dict) -> None:
        aid, tenant = record["id"], record["tenant"]
        ks = [keys.record(tenant, aid), keys.support(tenant, aid), keys.events(tenant, aid)]
        ks += [keys.tenant_index(tenant), keys.expiries(tenant), keys.usage(tenant), keys.usage_total(tenant)]
        self._delete(keys=[*ks, record.get("idempotency_key") or ks[0], *keys.metadata_indexes(record)], args=[aid])
        self.cache.delete(keys.weights(aid))

    def support(self, tenant: str, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.r.get(keys.support(tenant, aid))
        return codecs.bytes_to_support(data) if data else None

    def count_adaptations(self, tenants: list[str]) -> int:
        """Adaptations stored by these tenants: one ZCARD of each index, whatever the number stored
        (expired ones leave at the next prune or sweep). No global counter: on a cluster one key
        written by every create would be one shard's hot spot."""
        p = self.r.pipeline(transaction=False)
        for tenant in tenants:
            p.zcard(keys.tenant_index(tenant))
        return sum(p.execute())

    # ---- events ------------------------------------------------------------
    def add_events(self, tenant: str, aid: str, *items: dict) -> None:
        """Append events to the job's list, if the adaptation still exists."""
        if items:
            self.r.rpushx(keys.events(tenant, aid), *(json.dumps(e) for e in items))

    def step(self, tenant: str, aid: str, items: list[dict]) -> str | None:
        """A running job's steps: append their events while the job still runs, and read the status
        (a cancel shows here) in one round trip. -> the status, None when the adaptation is gone."""
        raw = self._step(keys=[keys.record(tenant, aid), keys.events(tenant, aid)], args=[json.dumps(e) for e in items])
        return None if raw is None else json.loads(raw)

    def events(self, tenant: str, aid: str, start: int, limit: int) -> tuple[list[dict], bool]:
        raw = self.r.lrange(keys.events(tenant, aid), start, start + limit)
        items = [json.loads(e) | {"id": f"ev_{start + i}"} for i, e in enumerate(raw)]
        return items[:limit], len(items) > limit

    # ---- weights cache -----------------------------------------------------
    def put_weights(self, record: dict, fast: dict[str, torch.Tensor]) -> int:
        """Write the weights until the adaptation expires. -> what they take in the cache's memory
        (the job's end charges it to the tenant: `transition(charge=...)`)."""
        data = codecs.tensors_to_bytes(fast)
        ttl = max(1, int(record["created_ts"] + record["ttl_seconds"] - time.time()))
        name = keys.weights(record["id"])
        p = self.cache.pipeline(transaction=False)
        p.set(name, data, ex=ttl)
        p.memory_usage(name, samples=0)
        return int(p.execute()[1] or len(data))

    def weights(self, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.cache.get(keys.weights(aid))
        return codecs.bytes_to_tensors(data) if data else None

    def drop_weights(self, aid: str) -> None:
        self.cache.delete(keys.weights(aid))

    def migrate(self) -> int:
        """The store in this version's key layout (migrate.py). -> keys moved."""
        return migrate(self.r, self.settings.redis_cluster == "on")

    def ping(self) -> None:
        self.r.ping()
        if self.cache is not self.r:
            self.cache.ping()


def event(kind: str, **data) -> dict:
    """One job event: its type, a UTC timestamp, and what it carries (a step's number and loss)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"type": kind, "created_at": stamp, **({"data": data} if data else {})}
