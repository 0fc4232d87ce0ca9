"""Fair job scheduling on top of Celery: which job a worker runs next.

A Celery message is a ticket, not a job: creating an adaptation appends its id to its
tenant's pending list and sends one ticket; a worker holding a ticket claims the next
job of the next tenant in a rotation (`claim`), so one tenant's backlog delays another
tenant's job by at most one job per worker, however long the backlog.

One tenant runs at most all workers but `tenant_reserved_workers` (1) at a time
(`max_running`), so another tenant's job starts at once even while a tenant's long jobs
keep the other workers busy; the price is that a lone tenant uses one worker fewer.

A claimed job is in flight, with the worker that holds it and a beat that a thread
refreshes for as long as the job runs, however slow its steps. `reap`, run by every live
worker in turn, puts back at the front of its tenant's line a job whose worker stopped
sending heartbeats or whose beat is older than `stale_seconds`, and sends tickets for
pending jobs that have none. So a killed worker's job resumes within seconds, not after
Celery's visibility timeout, and no job is left `running` without a live worker holding it.

Keys (the store's Redis): ra:p:{tenant} pending ids, oldest first; ra:rr the rotation
of tenants with pending jobs; ra:inflight id -> {worker, tenant, beat}; ra:run:{tenant}
the ids it runs; ra:j:{tenant} its queued and running ids (its quota of jobs)."""

from __future__ import annotations

import json
import time

import redis

from . import heartbeats, keys

ROTATION, INFLIGHT = "ra:rr", "ra:inflight"

# ARGV: worker, now, the most jobs one tenant may run at once. -> {id, tenant} of the claimed job, or nil.
# A tenant at its limit keeps its turn in the rotation and its jobs in line.
_CLAIM = """
local n = redis.call('LLEN', KEYS[1])
for _ = 1, n do
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then return nil end
  local pending = 'ra:p:' .. tenant
  local running = 'ra:run:' .. tenant
  if redis.call('SCARD', running) >= tonumber(ARGV[3]) then
    redis.call('RPUSH', KEYS[1], tenant)
  else
    local aid = redis.call('LPOP', pending)
    if redis.call('LLEN', pending) > 0 then redis.call('RPUSH', KEYS[1], tenant) end
    if aid then
      redis.call('HSET', KEYS[2], aid, cjson.encode({worker = ARGV[1], tenant = tenant, beat = tonumber(ARGV[2])}))
      redis.call('SADD', running, aid)
      return {aid, tenant}
    end
  end
end
return nil
"""

# ARGV: id, tenant, front (1 or 0). Queues a job; the tenant joins the rotation if it is not in it.
_ENQUEUE = """
local pending = 'ra:p:' .. ARGV[2]
if ARGV[3] == '1' then redis.call('LPUSH', pending, ARGV[1]) else redis.call('RPUSH', pending, ARGV[1]) end
if not redis.call('LPOS', KEYS[1], ARGV[2]) then redis.call('RPUSH', KEYS[1], ARGV[2]) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', 'ra:run:' .. ARGV[2], ARGV[1])
return 1
"""


def max_running(workers_alive: int, reserved: int) -> int:
    """How many jobs one tenant may run at once: all workers but `reserved` (at least one).
    Workers are counted by heartbeat (one per host name): each runs with --concurrency 1."""
    return max(1, workers_alive - reserved)


class Scheduler:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._claim = r.register_script(_CLAIM)
        self._enqueue = r.register_script(_ENQUEUE)

    def enqueue(self, aid: str, tenant: str, front: bool = False) -> None:
        self._enqueue(keys=[ROTATION, INFLIGHT], args=[aid, tenant, "1" if front else "0"])

    def claim(self, worker: str, max_running: int) -> tuple[str, str] | None:
        """-> (id, tenant) of the next job in the rotation whose tenant runs fewer than
        `max_running` jobs, now in flight; None when there is none."""
        got = self._claim(keys=[ROTATION, INFLIGHT], args=[worker, time.time(), max_running])
        return None if got is None else (got[0].decode(), got[1].decode())

    def beat(self, aid: str, worker: str, tenant: str) -> None:
        self.r.hset(INFLIGHT, aid, json.dumps({"worker": worker, "tenant": tenant, "beat": time.time()}))

    def finish(self, aid: str, tenant: str) -> None:
        """A job that ended (or will never run): out of flight and out of the tenant's jobs."""
        p = self.r.pipeline(transaction=False)
        p.hdel(INFLIGHT, aid)
        p.srem(keys.jobs(tenant), aid)
        p.srem(keys.running(tenant), aid)
        p.execute()

    def forget(self, aid: str, tenant: str) -> None:
        """A deleted adaptation: out of the line too."""
        p = self.r.pipeline(transaction=False)
        p.lrem(keys.pending(tenant), 0, aid)
        p.hdel(INFLIGHT, aid)
        p.srem(keys.jobs(tenant), aid)
        p.srem(keys.running(tenant), aid)
        p.execute()

    def active(self, tenant: str) -> int:
        return int(self.r.scard(keys.jobs(tenant)))

    def waiting(self, tenant: str) -> int:
        """The tenant's jobs in line, not yet claimed."""
        return int(self.r.llen(keys.pending(tenant)))

    def pending(self) -> int:
        tenants = {t.decode() for t in self.r.lrange(ROTATION, 0, -1)}
        if not tenants:
            return 0
        p = self.r.pipeline(transaction=False)
        for t in tenants:
            p.llen(keys.pending(t))
        return sum(p.execute())

    def reap(self, heartbeat_window: float, stale_seconds: float) -> list[str]:
        """Put back the in-flight jobs that no live worker holds. -> their ids."""
        alive = set(heartbeats.alive(self.r, heartbeat_window))
        now, back = time.time(), []
        for aid, raw in self.r.hgetall(INFLIGHT).items():
            held = json.loads(raw)
            if held["worker"] not in alive or now - held["beat"] > stale_seconds:
                self.enqueue(aid.decode(), held["tenant"], front=True)
                back.append(aid.decode())
        return back
