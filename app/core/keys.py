"""Every Redis key of Rapid Adapt, named in one place.

Durable store (settings.redis_url, must not evict), each key with the adaptation's TTL:
  ra:a:{id}               hash: the adaptation record, each field JSON-encoded
  ra:s:{id}               the support set as safetensors bytes (codecs.support_to_bytes)
  ra:idem:{tenant}:{h}    "{id} {request fingerprint}" for an Idempotency-Key (h: its SHA-256)
  ra:t:{tenant}           sorted set of the tenant's ids by creation time (the listing's index)
  ra:x:{tenant}           sorted set of the same ids by expiry time (pruning the index)
  ra:e:{id}               list of the job's events, oldest first, each JSON
  ra:b:{tenant}           sorted set: id -> bytes of its support set and weights (the tenant's quota)
  ra:p:{tenant}           list: the tenant's jobs in line, oldest first (app/core/jobs/scheduler.py)
  ra:rr                   list: the rotation of tenants with jobs in line
  ra:inflight             hash: claimed job id -> {worker, tenant, beat}
  ra:run:{tenant}         set: the tenant's claimed jobs
  ra:j:{tenant}           set: the tenant's queued and running jobs (its quota of jobs)
  ra:workers              hash: worker name -> last heartbeat (unix seconds)
  ra:reaper, ra:sweeper   locks: one worker at a time puts back dead workers' jobs / sweeps expired ids
  ra:stats                hash: finished jobs by status, a duration histogram, upkeep errors by task
  ra:count                adaptations stored: +1 on create, -1 for each id a delete or a prune takes out of
                          its tenant's index (so /metrics reads one key, whatever the number stored)
  ra:r:{tenant}:{second}  prediction images of the tenant in that second (2 s TTL)
Weights cache (settings.weights_url, may evict):
  ra:w:{id}               the adapted tensors as safetensors bytes
"""

from __future__ import annotations

import hashlib

WORKERS = "ra:workers"
STATS = "ra:stats"
COUNT = "ra:count"
ROTATION = "ra:rr"
INFLIGHT = "ra:inflight"
REAPER = "ra:reaper"
SWEEPER = "ra:sweeper"


def record(aid: str) -> str:
    return f"ra:a:{aid}"


def support(aid: str) -> str:
    return f"ra:s:{aid}"


def weights(aid: str) -> str:
    return f"ra:w:{aid}"


def tenant_index(tenant: str) -> str:
    return f"ra:t:{tenant}"


def expiries(tenant: str) -> str:
    return f"ra:x:{tenant}"


def usage(tenant: str) -> str:
    return f"ra:b:{tenant}"


def events(aid: str) -> str:
    return f"ra:e:{aid}"


def pending(tenant: str) -> str:
    return f"ra:p:{tenant}"


def jobs(tenant: str) -> str:
    return f"ra:j:{tenant}"


def running(tenant: str) -> str:
    return f"ra:run:{tenant}"


def rate(tenant: str, second: int) -> str:
    return f"ra:r:{tenant}:{second}"


def idempotency(tenant: str, key: str) -> str:
    return f"ra:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
