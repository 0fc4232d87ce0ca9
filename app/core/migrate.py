"""Moves a store written by an earlier version to this version's key layout (keys.py),
so that an upgrade loses nothing stored: `python -m app.core.migrate` by hand, and on its
own when the API starts and at a worker's first upkeep turn. Idempotent, one process at a
time (a lock), and a no-op (one GET) once `ra:schema` says the layout is current.

Layout 1 (before 0.9) named keys without hash tags: ra:a:{id}, ra:s:{id}, ra:e:{id},
ra:t:{T}, ra:x:{T}, ra:b:{T}, ra:j:{T}, ra:idem:{T}:{h}, ra:p:{T}, ra:run:{T}, ra:rr,
ra:inflight. It only ever ran on one Redis server, where RENAME moves a key with its TTL.
Layout 2 (1.1) had no metadata indexes (ra:{T}:m:{h}): each stored adaptation is added to
those of its metadata pairs. Layout 3 (1.2) kept the support set (ra:{T}:s:{id}) and the
events (list ra:{T}:e:{id}) in keys of their own: they move into the record's `_support` and
`_events` fields; its jobs in flight (one hash, ra:{q}:inflight, with a set of running ids per
tenant, ra:{q}:run:{T}, and of queued or running ids, ra:{T}:j) move to per-tenant flights."""

from __future__ import annotations

import json
import logging
import sys
import time

import redis

from . import keys

log = logging.getLogger("rapid_adapt.migrate")
LOCK = "ra:migrating"


def current(r: redis.Redis) -> bool:
    return int(r.get(keys.SCHEMA_KEY) or 1) >= keys.SCHEMA


def migrate(r: redis.Redis, cluster: bool = False) -> int:
    """Bring the store to the current layout. -> keys moved (0 when it already was, or when
    another process moved them meanwhile)."""
    if current(r):
        return 0
    layout = int(r.get(keys.SCHEMA_KEY) or (2 if cluster else 1))  # layout 1 never ran on a cluster
    if not r.set(LOCK, 1, nx=True, ex=600):
        deadline = time.monotonic() + 60
        while not current(r) and time.monotonic() < deadline:
            time.sleep(0.2)
        return 0
    try:
        moved = _move(r) if layout < 2 else 0
        moved += _index_metadata(r) if layout < 3 else 0
        moved += _fold(r) + _flights(r)
        r.set(keys.SCHEMA_KEY, keys.SCHEMA)
    finally:
        r.delete(LOCK)
    if moved:
        log.warning("store moved to the current key layout", extra={"keys": moved, "schema": keys.SCHEMA})
    return moved


def _rename(r: redis.Redis, old: str, new: str) -> int:
    try:
        r.rename(old, new)
        return 1
    except redis.ResponseError:  # no such key
        return 0


def _move(r: redis.Redis) -> int:
    moved = 0
    for raw in r.scan_iter(match="ra:a:*", count=1000):
        old, aid = raw.decode(), raw.decode().removeprefix("ra:a:")
        tenant = json.loads(r.hget(old, "tenant") or "null")
        if tenant is None:
            continue
        idem = json.loads(r.hget(old, "idempotency_key") or "null")
        if idem and idem.startswith("ra:idem:"):
            new_idem = keys.idempotency_digest(tenant, idem.rsplit(":", 1)[1])
            moved += _rename(r, idem, new_idem)
            r.hset(old, "idempotency_key", json.dumps(new_idem))
        for prefix, name in (("ra:s:", _support_key), ("ra:e:", _events_key), ("ra:a:", keys.record)):
            moved += _rename(r, prefix + aid, name(tenant, aid))
    per_tenant = {
        "ra:t:": keys.tenant_index,
        "ra:x:": keys.expiries,
        "ra:b:": keys.usage,
        "ra:p:": keys.pending,
    }
    for prefix, name in per_tenant.items():
        for raw in r.scan_iter(match=prefix + "*", count=1000):
            old = raw.decode()
            tenant = old.removeprefix(prefix)
            if "{" not in old and keys.TENANT.fullmatch(tenant):
                moved += _rename(r, old, name(tenant))
                if prefix == "ra:b:":  # layout 1 summed the bytes at each create; now the sum is kept
                    r.set(
                        keys.usage_total(tenant), int(sum(b for _, b in r.zrange(name(tenant), 0, -1, withscores=True)))
                    )
    moved += _rename(r, "ra:rr", keys.ROTATION) + _rename(r, "ra:inflight", INFLIGHT_3)
    for raw in [*r.scan_iter(match="ra:j:*", count=1000), *r.scan_iter(match="ra:run:*", count=1000)]:
        r.delete(raw)  # the sets of jobs and of running jobs: layout 4 counts lines and flights
    r.delete("ra:count")  # layout 1's count of adaptations: now each tenant's index is counted
    return moved


def _index_metadata(r: redis.Redis) -> int:
    """Add every stored adaptation with metadata to the indexes of its pairs (layout 2 -> 3).
    -> index entries written."""
    written = 0
    for raw in r.scan_iter(match="ra:{*}:a:*", count=1000):
        fields = r.hmget(raw, "tenant", "id", "metadata", "created_ts")
        if None in fields:
            continue
        tenant, aid, metadata, created = (json.loads(f) for f in fields)
        ttl = r.ttl(raw)
        for index in keys.metadata_indexes({"tenant": tenant, "metadata": metadata}):
            written += r.zadd(index, {aid: created})
            if ttl > 0 and r.ttl(index) < ttl:
                r.expire(index, ttl)
    return written


def _support_key(tenant: str, aid: str) -> str:  # layouts 2 and 3
    return f"ra:{{{tenant}}}:s:{aid}"


def _events_key(tenant: str, aid: str) -> str:  # layouts 2 and 3
    return f"ra:{{{tenant}}}:e:{aid}"


INFLIGHT_3 = "ra:{q}:inflight"  # layouts 2 and 3: every tenant's flights in one hash


def _flights(r: redis.Redis) -> int:
    """The jobs in flight into their tenants' flights (layout 3 -> 4). -> jobs moved."""
    moved = 0
    for aid, raw in r.hgetall(INFLIGHT_3).items():
        tenant = json.loads(raw)["tenant"]
        r.hset(keys.flights(tenant), aid, raw)
        r.sadd(keys.FLYING, tenant)
        moved += 1
    r.delete(INFLIGHT_3)
    for raw in [*r.scan_iter(match="ra:{q}:run:*", count=1000), *r.scan_iter(match="ra:{*}:j", count=1000)]:
        r.delete(raw)
    return moved


# KEYS: record, its support set, its events (layout 3). Both into the record, in one slot, at once.
_FOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local support = redis.call('GET', KEYS[2])
if support then redis.call('HSET', KEYS[1], '_support', support) end
local events = redis.call('LRANGE', KEYS[3], 0, -1)
if #events > 0 then redis.call('HSET', KEYS[1], '_events', table.concat(events, '\\n')) end
redis.call('HDEL', KEYS[1], 'held_bytes')
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


def _fold(r: redis.Redis) -> int:
    """Each record's support set and events into its own fields (layout 3 -> 4). -> records folded."""
    fold, folded = r.register_script(_FOLD), 0
    for raw in r.scan_iter(match="ra:{*}:a:*", count=1000):
        name = raw.decode()
        tenant, aid = keys.tenant_of(name), name.rsplit(":", 1)[1]
        folded += int(fold(keys=[name, _support_key(tenant, aid), _events_key(tenant, aid)]))
    return folded


if __name__ == "__main__":
    from .config import get_settings
    from .store import connect

    s = get_settings()
    print(f"moved {migrate(connect(s.redis_url, s), s.redis_cluster == 'on')} keys", file=sys.stderr)
