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

from . import codecs, keys, tracing
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

# Lua functions for the scripts below. `alloc` mirrors `allocated`: what Redis allocates for a
# string of n bytes. `charge` adds bytes to the tenant's usage of one adaptation and its total.
# `append` adds events to a record's `_events` (JSON, one per line).
_BYTES_FUNCTION = """
local function alloc(n)
  if n < 32 then n = n + 2 elseif n < 256 then n = n + 4 elseif n < 65536 then n = n + 6 else n = n + 10 end
  if n <= 8 then return 8 end
  if n <= 128 then return math.ceil(n / 16) * 16 end
  local g, top = 32, 256
  while n > top do g, top = g * 2, top * 2 end
  return math.ceil(n / g) * g
end
local function charge(usage, total, aid, n)
  if n ~= 0 and redis.call('ZADD', usage, 'XX', 'INCR', n, aid) then redis.call('INCRBY', total, n) end
end
local function append(old, items, from, to)
  local text = table.concat(items, '\\n', from, to)
  if old and old ~= '' then return old .. '\\n' .. text end
  return text
end
"""

# KEYS: record, the tenant's usage and its total, its webhooks due; ARGV[1] allowed current statuses
# (JSON list), ARGV[2] a channel to publish ARGV[3] on ('' for none: a final status publishes),
# ARGV[3] the notice (the id, then a space and the record's public JSON when the caller has it),
# ARGV[4] the id, ARGV[5] bytes to charge besides (its weights, in the cache), ARGV[6] n, then n
# events, then field, value pairs. -> the status it had (JSON), or nil when the record is gone; the
# fields are set, the events appended, the notice published, a record with a webhook made due
# (with a final status: in the same script, so no end goes untold) and the tenant charged what
# the record grew by (read from the old values in the same HMGET) only when allowed.
_TRANSITION = (
    _BYTES_FUNCTION
    + """
local n = tonumber(ARGV[6])
local first = 7 + n
local names = {'status', '_events', 'webhook_url'}
for i = first, #ARGV, 2 do names[#names + 1] = ARGV[i] end
local old = redis.call('HMGET', KEYS[1], unpack(names))
local status = old[1]
if not status then return nil end
for _, allowed in ipairs(cjson.decode(ARGV[1])) do
  if cjson.decode(status) == allowed then
    local grew, pairs, k = tonumber(ARGV[5]), {}, 4
    for i = first, #ARGV, 2 do
      local was = old[k]
      grew = grew + alloc(#ARGV[i + 1]) - (was and alloc(#was) or -(alloc(#ARGV[i]) + 24))
      pairs[#pairs + 1], pairs[#pairs + 2], k = ARGV[i], ARGV[i + 1], k + 1
    end
    if n > 0 then
      local events = append(old[2], ARGV, 7, 6 + n)
      grew = grew + alloc(#events) - alloc(#(old[2] or ''))
      pairs[#pairs + 1], pairs[#pairs + 2] = '_events', events
    end
    redis.call('HSET', KEYS[1], unpack(pairs))
    if ARGV[2] ~= '' then
      redis.call('PUBLISH', ARGV[2], ARGV[3])
      if old[3] then
        local now = redis.call('TIME')
        redis.call('ZADD', KEYS[4], now[1] + now[2] / 1e6, ARGV[4])
      end
    end
    charge(KEYS[2], KEYS[3], ARGV[4], grew)
    return status
  end
end
return status
"""
)

# KEYS: record, usage, usage total; ARGV: id, then events. Appends them only while the job runs,
# and charges what they add. -> the status (JSON), nil when the record is gone.
_STEP = (
    _BYTES_FUNCTION
    + """
local old = redis.call('HMGET', KEYS[1], 'status', '_events')
if old[1] == '"running"' then
  local events = append(old[2], ARGV, 2, #ARGV)
  redis.call('HSET', KEYS[1], '_events', events)
  charge(KEYS[2], KEYS[3], ARGV[1], alloc(#events) - alloc(#(old[2] or '')))
end
return old[1]
"""
)

# KEYS: record; ARGV: started_at (JSON), the started event's timestamp, resumed (1/0). A queued
# job (or a running one, resumed after a Redis error) becomes running, one more attempt, its
# started event appended; the create charged these writes already (`start_fields`).
# -> {status it had, the record's field, value pairs as they were (its support set among them)},
# nil when the record is gone.
_START = """
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return nil end
local at = {}
for i = 1, #all, 2 do at[all[i]] = all[i + 1] end
local status = at['status']
if status == '"queued"' or (status == '"running"' and ARGV[3] == '1') then
  local attempts = tonumber(at['attempts'] or '0') + 1
  local started = '{"type": "started", "created_at": "' .. ARGV[2] .. '", "data": {"attempt": ' .. attempts .. '}}'
  local events = at['_events']
  events = (events and events ~= '') and (events .. '\\n' .. started) or started
  redis.call('HSET', KEYS[1], 'status', '"running"', 'started_at', ARGV[1], 'attempts', attempts, '_events', events)
end
return {status, all}
"""

# KEYS: record, events; ARGV: events. Appends them if the record exists (a job put back).
_APPEND = (
    _BYTES_FUNCTION
    + """
local old = redis.call('HGET', KEYS[1], '_events')
if not old then return 0 end
redis.call('HSET', KEYS[1], '_events', append(old, ARGV, 1, #ARGV))
return 1
"""
)

# A Lua function for the scripts below: drop the tenant's expired ids (1000 at most) from its
# indexes and give their bytes back. -> how many it dropped.
_PRUNE_FUNCTION = """
local function prune(index, expiries, usage, total, now)
  local dead = redis.call('ZRANGEBYSCORE', expiries, '-inf', now, 'LIMIT', 0, 1000)
  if #dead == 0 then return 0 end
  local freed = 0
  for _, b in ipairs(redis.call('ZMSCORE', usage, unpack(dead))) do freed = freed + (tonumber(b) or 0) end
  redis.call('ZREM', index, unpack(dead))
  redis.call('ZREM', expiries, unpack(dead))
  redis.call('ZREM', usage, unpack(dead))
  if redis.call('DECRBY', total, freed) <= 0 then redis.call('DEL', total) end
  return #dead
end
"""

# Check the tenant's quotas (over one, first prune its expired ids and check again), then write
# a new adaptation, all in one slot and at once (two creates cannot both pass the last quota),
# and charge what it holds. The byte quota is checked by charging first (INCRBY answers the new
# total) and taking the charge back when that is over the limit.
# KEYS: record, index, expiries, usage, usage total, then the metadata indexes of its key=value
#       pairs.
# ARGV: now, id, ttl, created_ts, expires (unix), bytes it holds (`Store.create`), max adaptations,
#       max bytes, then the record's field, value pairs. (The quota of jobs is the scheduler's.)
# -> the limit that refused it, or '' when written
_CREATE = (
    _PRUNE_FUNCTION
    + """
local held = tonumber(ARGV[6])
local function over()
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then return 'tenant_max_adaptations' end
  if redis.call('INCRBY', KEYS[5], held) > tonumber(ARGV[8]) then
    if redis.call('DECRBY', KEYS[5], held) <= 0 then redis.call('DEL', KEYS[5]) end
    return 'tenant_max_bytes'
  end
  return nil
end
local refused = over()
if refused and prune(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1]) > 0 then refused = over() end
if refused then return refused end
local aid, ttl = ARGV[2], tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[4], aid)
redis.call('ZADD', KEYS[3], ARGV[5], aid)
for i = 6, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[4], aid)
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
redis.call('ZADD', KEYS[4], held, aid)
return ''
"""
)

# KEYS: index, expiries, usage, usage total; ARGV: now. -> how many expired ids it dropped.
_PRUNE = _PRUNE_FUNCTION + "return prune(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])"

# KEYS: record, index, expiries, usage, usage total, the idempotency key (or the record again),
# then its metadata indexes; ARGV: id. Everything of one adaptation gone, its bytes given back.
_DELETE = """
local freed = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
for i = 7, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 and redis.call('DECRBY', KEYS[5], freed) <= 0 then
  redis.call('DEL', KEYS[5])
end
return 1
"""

# The record's own fields (each JSON): what a read fetches (HMGET), leaving its support set and
# events, which can be large, to the reads that want them. A field written that is not here would
# never be read: `Store` refuses to write one.
RECORD_FIELDS = (
    "id", "tenant", "model", "model_version", "task", "status", "mode", "steps", "ttl_seconds",
    "metadata", "n_support", "created_at", "created_ts", "expires_at", "classes", "target_shape",
    "idempotency_key", "started_at", "attempts", "finished_at", "metrics", "error", "webhook_url", "webhook",
    "trace",
)  # fmt: skip
SUPPORT, EVENTS = "_support", "_events"  # the record's other two fields


def allocated(n: int) -> int:
    """What Redis allocates for a string of n bytes: its sds header and NUL, rounded up to
    jemalloc's size class (16-byte steps to 128, then four classes per power of two). The store
    charges a tenant from this model of Redis's memory (mirrored in Lua as `alloc`), not from a
    MEMORY USAGE call per key: a command fewer per key written; tests hold it to MEMORY USAGE."""
    n += 2 if n < 32 else 4 if n < 256 else 6 if n < 65536 else 10
    if n <= 8:
        return 8
    if n <= 128:
        return -(-n // 16) * 16
    g, top = 32, 256
    while n > top:
        g, top = g * 2, top * 2
    return -(-n // g) * g


def string_bytes(key: str, value: bytes | str) -> int:
    """MEMORY USAGE of a string key: its value, the object, the key's name and its table entry."""
    return allocated(len(value)) + 16 + allocated(len(key)) + 24


def hash_bytes(key: str, pairs: list[tuple[bytes, bytes]], fields: int) -> int:
    """MEMORY USAGE of a hash of `pairs` (stored as a table: a value over 64 bytes makes it one)
    whose table has room for `fields` fields: the object, its table and buckets, each field and
    value with its entry, the key's name and its entry in the keyspace."""
    slots = 4
    while slots < fields:
        slots *= 2
    held = sum(allocated(len(f)) + allocated(len(v)) + 24 for f, v in pairs)
    return 16 + 56 + 8 * slots + held + allocated(len(key.encode())) + 24


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


def decode_fields(values: list) -> dict | None:
    """An HMGET of RECORD_FIELDS -> the record (None when it is gone)."""
    if values[0] is None:
        return None
    return {k: json.loads(v) for k, v in zip(RECORD_FIELDS, values) if v is not None}


def json_pairs(fields: dict) -> list[tuple[str, str]]:
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"not a record field (add it to RECORD_FIELDS): {sorted(unknown)}")
    return [(k, json.dumps(v, ensure_ascii=False)) for k, v in fields.items()]


def start_fields(attempt: int = 1) -> dict[str, str]:
    """The fields a job's start writes (as the start script writes them), for the create to
    charge: their sizes are known before the job runs."""
    return {"status": '"running"', "started_at": json.dumps(now_stamp()), "attempts": str(attempt)}


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
        self._start = self.r.register_script(_START)
        self._append = self.r.register_script(_APPEND)
        self.settings = settings
        self._fill = (0.0, 0.0)  # (checked at, used / maxmemory)
        self._refused: dict[str, float] = {}  # tenant -> when this process last saw it over a quota
        self._counted: dict[str, tuple[int, int]] = {}  # tenant -> (second, its prediction images then), as last read

    # ---- adaptations -------------------------------------------------------
    def create(
        self,
        record: dict,
        support: dict[str, torch.Tensor],
        ttl: int,
        idempotency: tuple[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Store a new adaptation (`Jobs.submit` then puts its job in line); with (key,
        fingerprint), a key seen before returns (existing id, False) instead.
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
            traced = {"trace_id": tid} if (tid := tracing.trace_id(record.get("trace") or {})) else {}
            name, queued = keys.record(tenant, aid), json.dumps(event("queued", **traced))
            pairs = [(k.encode(), v.encode()) for k, v in json_pairs(record)]
            pairs += [(SUPPORT.encode(), data), (EVENTS.encode(), queued.encode())]
            held = self._held(name, pairs, queued, tenant, record)
            refused = self._create(
                keys=[
                    name,
                    keys.tenant_index(tenant),
                    keys.expiries(tenant),
                    keys.usage(tenant),
                    keys.usage_total(tenant),
                    *keys.metadata_indexes(record),
                ],
                args=[now, aid, ttl, record["created_ts"], now + ttl, held]
                + [s.tenant_max_adaptations, s.tenant_max_bytes]
                + [x for pair in pairs for x in pair],
            )
            if refused:
                raise self.exceeded(tenant, refused.decode())
        except (QuotaExceeded, StorageFull):
            if idempotency:
                self.r.delete(ikey)  # the key did not make an adaptation: a retry may
            raise
        return aid, True

    @staticmethod
    def _held(name: str, pairs: list[tuple[bytes, bytes]], queued: str, tenant: str, record: dict) -> int:
        """What a new adaptation holds in Redis once its job has started (the start's writes are
        charged here: their sizes are known), its idempotency key and its index entries."""
        started = {k.encode(): v.encode() for k, v in start_fields().items()}
        event_bytes = len(json.dumps(event("started", attempt=1)).encode())
        after = dict(pairs) | started | {EVENTS.encode(): b"x" * (len(queued.encode()) + 1 + event_bytes)}
        held = hash_bytes(name, list(after.items()), len(after) + 3)  # room for the end's fields
        if ikey := record.get("idempotency_key"):
            held += string_bytes(ikey, "x" * (len(record["id"]) + 65))  # "{id} {sha256 hex}"
        return held + INDEX_BYTES + METADATA_INDEX_BYTES * len(record.get("metadata") or {})

    def exceeded(self, tenant: str, limit: str) -> QuotaExceeded:
        """The error for a tenant over `limit`; its next creates are checked early (check_quotas)."""
        self._refused[tenant] = time.monotonic()
        return self._exceeded(limit)

    def _exceeded(self, limit: str) -> QuotaExceeded:
        what, retry = LIMITS[limit]
        return QuotaExceeded(limit, getattr(self.settings, limit), what, retry)

    def check_quotas(self, tenant: str, idempotency_key: str | None = None) -> None:
        """A cheap early refusal, before a request's images are decoded: for a tenant this process
        saw over a quota in the last 5 s, the quotas are read again (create checks them anyway,
        atomically with the write). A create whose Idempotency-Key is stored is let through: as a
        retry it finds its adaptation. Its lookup is paid only by a create about to be refused, so
        a flood of keyed creates costs no decoding either."""
        try:
            self._check_quotas(tenant)
        except (QuotaExceeded, StorageFull):
            if idempotency_key and self.r.exists(keys.idempotency(tenant, idempotency_key)):
                return
            raise

    def _check_quotas(self, tenant: str) -> None:
        if self.fill() >= self.settings.store_max_fill:
            raise StorageFull("the store is nearly full; retry later")
        if not self.refused_lately(tenant):
            return
        s = self.settings
        p = self.r.pipeline(transaction=False)
        p.zcard(keys.tenant_index(tenant))
        p.llen(keys.pending(tenant))
        p.hlen(keys.flights(tenant))
        p.get(keys.usage_total(tenant))
        stored, queued, running, usage = p.execute()
        jobs = queued + running
        for limit, used in (
            ("tenant_max_adaptations", stored),
            ("tenant_max_jobs", jobs),
            ("tenant_max_bytes", int(usage or 0)),
        ):
            if used >= getattr(s, limit):
                raise self._exceeded(limit)
        self._refused.pop(tenant, None)

    def refused_lately(self, tenant: str) -> bool:
        """Whether this process saw the tenant over a quota in the last 5 s."""
        return time.monotonic() - self._refused.get(tenant, -60.0) <= 5.0

    def fill(self) -> float:
        """used_memory / maxmemory of the store's Redis (0 without a maxmemory), read at most once a
        second; on a cluster, of its fullest primary."""
        checked, value = self._fill
        if time.monotonic() - checked > 1.0:
            value = max(used / most if most else 0.0 for used, most in self.memory())
            self._fill = (time.monotonic(), value)
        return value

    def memory(self) -> list[tuple[int, int]]:
        """(used_memory, maxmemory) of the store's Redis, or of each primary of a cluster."""
        if isinstance(self.r, redis.RedisCluster):
            nodes = self.r.info("memory", target_nodes=redis.RedisCluster.PRIMARIES).values()
        else:
            nodes = [self.r.info("memory")]
        return [(int(n["used_memory"]), int(n["maxmemory"])) for n in nodes]

    def get(self, tenant: str, aid: str) -> dict | None:
        return decode_fields(self.r.hmget(keys.record(tenant, aid), RECORD_FIELDS))

    def update(self, tenant: str, aid: str, **fields) -> bool:
        """Set fields of an existing record; False (and nothing written) if it is gone."""
        args = [x for pair in json_pairs(fields) for x in pair]
        return bool(self._set_if_exists(keys=[keys.record(tenant, aid)], args=args))

    def start(self, tenant: str, aid: str, started_at: str, resumed: bool) -> tuple[str, dict, bytes | None] | None:
        """A queued job (or a running one, `resumed`) now running, one more attempt, its started
        event appended, in one script. -> (the status it had, the record as it was, the support
        set's bytes), None when the record is gone."""
        stamp = event("started")["created_at"]
        got = self._start(keys=[keys.record(tenant, aid)], args=[json.dumps(started_at), stamp, int(resumed)])
        if got is None:
            return None
        status, flat = json.loads(got[0]), got[1]
        raw = dict(zip(flat[::2], flat[1::2]))
        data = raw.pop(SUPPORT.encode(), None)
        raw.pop(EVENTS.encode(), None)
        return status, decode_record(raw), data

    def transition(
        self,
        tenant: str,
        aid: str,
        allowed: tuple[str, ...],
        events: list[dict] = (),
        replicas: int = 0,
        notice: bool | dict = False,
        charge: int = 0,
        **fields,
    ) -> str | None:
        """Set fields (a new status among them) and append `events` only if the status is one of
        `allowed`, and with `notice` publish the id on keys.DONE (a final status: requests waiting
        for it are told, app/api/notices.py; a dict `notice` is the record's public form, sent
        with the id so that they need not read it), and charge the tenant what the record grew by
        and `charge` bytes besides (its weights). -> the status the record had, or None when it is
        gone. With `replicas`, the call returns once that many replicas hold this write and every
        one before it on its primary
        (Redis's WAIT, on the same connection), or after `store_replica_wait_ms` (logged)."""
        ks = [keys.record(tenant, aid), keys.usage(tenant), keys.usage_total(tenant), keys.webhooks(tenant)]
        told = aid if notice is True else f"{aid} {json.dumps(notice)}"
        args = [json.dumps(list(allowed)), keys.DONE if notice else "", told, aid, charge, len(events)]
        args += [json.dumps(e) for e in events]
        args += [x for pair in json_pairs(fields) for x in pair]
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
        second = int(time.time())
        window = keys.rate(tenant, second)
        p = self.r.pipeline(transaction=False)
        p.hmget(keys.record(tenant, aid), RECORD_FIELDS)
        p.incrby(window, n)
        p.expire(window, 2)
        raw, count, _ = p.execute()
        self._counted[tenant] = (second, count)
        return decode_fields(raw), count

    def over_rate(self, tenant: str) -> bool:
        """Whether this second's window, as this process last counted it, already holds more of
        the tenant's prediction images than its rate: then any request with an image is over too
        until the second ends (the window only grows)."""
        second, count = self._counted.get(tenant, (0, 0))
        return second == int(time.time()) and count > self.settings.tenant_predict_images_per_second

    def status(self, tenant: str, aid: str) -> str | None:
        raw = self.r.hget(keys.record(tenant, aid), "status")
        return None if raw is None else json.loads(raw)

    def prune(self, tenant: str) -> None:
        """Drop expired adaptations from the tenant's indexes: they hold no dead ids."""
        ks = [keys.tenant_index(tenant), keys.expiries(tenant), keys.usage(tenant), keys.usage_total(tenant)]
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
                p.hmget(keys.record(tenant, aid), RECORD_FIELDS)
            raws = [decode_fields(v) for v in p.execute()]
            if gone := [aid for (aid, _), raw in zip(rows, raws) if not raw and wanted]:
                self.r.zrem(index, *gone)  # expired or deleted since: a metadata index is not pruned
            for (aid, score), raw in zip(rows, raws):
                bound, scanned = Position(score, aid), scanned + 1
                if raw and match(raw):
                    found.append(raw)
                    if len(found) > limit:
                        break
            chunk = min(chunk * 2, 1000)
        return found[:limit], (self.position(found[limit - 1]) if len(found) > limit else None)

    def position(self, record: dict) -> Position:
        return Position(float(record["created_ts"]), record["id"])

    def delete(self, record: dict) -> None:
        aid, tenant = record["id"], record["tenant"]
        ks = [keys.record(tenant, aid), keys.tenant_index(tenant), keys.expiries(tenant)]
        ks += [keys.usage(tenant), keys.usage_total(tenant)]
        self._delete(keys=[*ks, record.get("idempotency_key") or ks[0], *keys.metadata_indexes(record)], args=[aid])
        self.cache.delete(keys.weights(aid))

    def support(self, tenant: str, aid: str) -> dict[str, torch.Tensor] | None:
        data = self.r.hget(keys.record(tenant, aid), SUPPORT)
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
        """Append events to the job's, if the adaptation still exists."""
        if items:
            self._append(keys=[keys.record(tenant, aid)], args=[json.dumps(e) for e in items])

    def step(self, tenant: str, aid: str, items: list[dict]) -> str | None:
        """A running job's steps: append their events (and charge them) while the job still runs,
        and read the status (a cancel shows here) in one round trip. -> the status, None when the
        adaptation is gone."""
        ks = [keys.record(tenant, aid), keys.usage(tenant), keys.usage_total(tenant)]
        raw = self._step(keys=ks, args=[aid, *(json.dumps(e) for e in items)])
        return None if raw is None else json.loads(raw)

    def events(self, tenant: str, aid: str, start: int, limit: int) -> tuple[list[dict], bool]:
        raw = self.r.hget(keys.record(tenant, aid), EVENTS)
        lines = raw.decode().split("\n")[start : start + limit + 1] if raw else []
        items = [json.loads(e) | {"id": f"ev_{start + i}"} for i, e in enumerate(lines)]
        return items[:limit], len(items) > limit

    # ---- weights cache -----------------------------------------------------
    def put_weights(self, record: dict, fast: dict[str, torch.Tensor]) -> int:
        """Write the weights until the adaptation expires. -> what they take in the cache's memory
        (the job's end charges it to the tenant: `transition(charge=...)`)."""
        data = codecs.tensors_to_bytes(fast)
        ttl = max(1, int(record["created_ts"] + record["ttl_seconds"] - time.time()))
        name = keys.weights(record["id"])
        self.cache.set(name, data, ex=ttl)
        return string_bytes(name, data)

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


def now_stamp() -> str:
    """Now in UTC to the millisecond, always 24 characters: 2026-12-04T06:24:20.549Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def event(kind: str, **data) -> dict:
    """One job event: its type, a UTC timestamp, and what it carries (a step's number and loss)."""
    return {"type": kind, "created_at": now_stamp(), **({"data": data} if data else {})}
