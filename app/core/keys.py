"""Every Redis key of Rapid Adapt, named in one place.

Keys are laid out for a Redis Cluster (RAPID_ADAPT_REDIS_CLUSTER=on): what one
transaction or script touches shares a hash tag, so it lives in one slot.
  - a tenant's keys carry the tag {tenant}: its records, support sets, events, indexes and
    quotas move together, and tenants spread over the shards;
  - the scheduler's keys carry the tag {q}: the claim script reads the whole rotation and
    every tenant's line at once, so they share one slot (the first bottleneck at fleet size,
    docs/scaling.md);
  - the rest are single keys, each touched alone.

Durable store (settings.redis_url, must not evict), each key with the adaptation's TTL:
  ra:{T}:a:{id}           hash: the adaptation record, each field JSON-encoded (store.RECORD_FIELDS),
                          and in two more fields its support set as safetensors bytes (`_support`,
                          codecs.support_to_bytes) and the job's events, oldest first, a JSON
                          object a line (`_events`): one key, one TTL, one write per move
  ra:{T}:idem:{h}         "{id} {request fingerprint}" for an Idempotency-Key (h: its SHA-256)
Per tenant T (no TTL: Redis drops an index once its last member is pruned):
  ra:{T}:t                sorted set of the tenant's ids by creation time (the listing's index)
  ra:{T}:x                sorted set of the same ids by expiry time (pruning the index)
  ra:{T}:b                sorted set: id -> bytes it holds in Redis (the tenant's byte quota)
  ra:{T}:bt               their sum, kept on write (a create checks the byte quota in O(1))
  ra:{T}:r:{second}       prediction images of the tenant in that second (2 s TTL)
  ra:{T}:h                sorted set: ids whose webhook is due -> when (a final status adds one, in the
                          script that sets it; app/core/webhooks.py delivers, retries and removes)
  ra:{T}:m:{h}            sorted set of the ids whose metadata holds one key=value pair (h: its SHA-256),
                          by creation time: a filtered listing walks it, not the whole index; it lives
                          as long as its longest-lived member, and a listing drops members since gone
The scheduler (app/core/jobs/scheduler.py), one slot:
  ra:{q}:p:{T}            list: the tenant's jobs in line, oldest first: ids, or "ID/BATCH KEY" for a
                          job that may adapt together with others (scheduler.entry)
  ra:{q}:rr               list: the rotation of tenants with jobs in line
  ra:{q}:f:{T}            hash: the tenant's flights, claimed job id -> {worker, tenant, beat}
  ra:{q}:flying           set: the tenants that may have flights (a claim adds its tenant, the
                          reaper drops one whose flights are empty)
  ra:{q}:active           sorted set: tenant -> when a job of it was last claimed (the reservation
                          holds workers for tenants active lately; older members are dropped)
Single keys:
  ra:workers              hash: worker name -> last heartbeat (unix seconds)
  ra:reaper, ra:sweeper   locks: one worker at a time puts back dead workers' jobs / sweeps expired ids
  ra:stats                hash: finished jobs by status, a duration histogram, upkeep errors by task
  ra:schema               the key layout's version (app/core/migrate.py moves older layouts to this one)
Weights cache (settings.weights_url, may evict):
  ra:w:{id}               the adapted tensors as safetensors bytes
"""

from __future__ import annotations

import hashlib
import re

SCHEMA = 4
SCHEMA_KEY = "ra:schema"
DONE = "ra:done"  # a pub/sub channel, not a key: the ids of jobs that just ended (app/api/notices.py)
WORKERS = "ra:workers"
STATS = "ra:stats"
REAPER = "ra:reaper"
SWEEPER = "ra:sweeper"
ROTATION = "ra:{q}:rr"
FLYING = "ra:{q}:flying"
ACTIVE = "ra:{q}:active"

TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a tenant's name: also its hash tag, so no braces


def _t(tenant: str) -> str:
    return f"ra:{{{tenant}}}"


def record(tenant: str, aid: str) -> str:
    return f"{_t(tenant)}:a:{aid}"


def idempotency(tenant: str, key: str) -> str:
    return idempotency_digest(tenant, hashlib.sha256(key.encode()).hexdigest())


def idempotency_digest(tenant: str, digest: str) -> str:
    return f"{_t(tenant)}:idem:{digest}"


def metadata_index(tenant: str, key: str, value: str) -> str:
    pair = hashlib.sha256(f"{key}\0{value}".encode()).hexdigest()
    return f"{_t(tenant)}:m:{pair}"


def metadata_indexes(record: dict) -> list[str]:
    """The metadata indexes an adaptation's record belongs to, one per key=value pair."""
    return [metadata_index(record["tenant"], k, v) for k, v in sorted((record.get("metadata") or {}).items())]


def tenant_index(tenant: str) -> str:
    return f"{_t(tenant)}:t"


def expiries(tenant: str) -> str:
    return f"{_t(tenant)}:x"


def usage(tenant: str) -> str:
    return f"{_t(tenant)}:b"


def usage_total(tenant: str) -> str:
    return f"{_t(tenant)}:bt"


def rate(tenant: str, second: int) -> str:
    return f"{_t(tenant)}:r:{second}"


def tenant_of(key: str) -> str:
    """The tenant of one of its keys (the text of the hash tag)."""
    return key[key.index("{") + 1 : key.index("}")]


def webhooks(tenant: str) -> str:
    return f"{_t(tenant)}:h"


def pending(tenant: str) -> str:
    return f"ra:{{q}}:p:{tenant}"


def flights(tenant: str) -> str:
    return f"ra:{{q}}:f:{tenant}"


def weights(aid: str) -> str:
    return f"ra:w:{aid}"
