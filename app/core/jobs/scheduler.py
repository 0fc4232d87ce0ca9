"""Fair job scheduling on top of Celery: which job a worker runs next.

A Celery message is a ticket, not a job: creating an adaptation appends its id to its
tenant's line and sends one ticket; a worker holding a ticket claims the next job of the
next tenant in a rotation (`claim`), so one tenant's backlog delays another tenant's job
by at most one job per worker, however long the backlog.

One tenant runs at most all workers but `tenant_reserved_workers` (1) at a time
(`max_running`), so another tenant's job starts at once even while a tenant's long jobs
keep the other workers busy; the price is that a lone tenant uses one worker fewer.

A claimed job is in flight, with the worker that holds it and a beat that a thread
refreshes for as long as the job runs. `dead` names the jobs in flight that no live
worker holds; the lifecycle (lifecycle.py) puts them back or fails them.

Every script takes its keys as KEYS (names from app/core/keys.py), never building one."""

from __future__ import annotations

import json
import time

import redis

from .. import keys

# KEYS: rotation, inflight, then (line, running) of each tenant named in ARGV[4..], in the
# order read from the rotation. ARGV: worker, now, the most jobs one tenant may run at once.
# -> {id, tenant, held, more} of the claimed job, or {'', '', held, 0} when none can be claimed
# (held: 1 when a tenant at its limit was passed over; more: 1 when the tenant has more jobs in
# line); 'stale' when the rotation holds a tenant whose keys were not passed (it changed since it
# was read: read it again). A tenant at its limit goes to the back of the rotation with its jobs
# still in line. ARGV[4..] lists the rotation as last read (the rotation holds each tenant once).
_CLAIM = """
local given = {}
for i = 4, #ARGV do given[ARGV[i]] = i - 3 end
local held = 0
for _ = 3, #ARGV do  -- one more turn than tenants given: a tenant that joined since shows as stale
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then break end
  local k = given[tenant]
  if not k then
    redis.call('LPUSH', KEYS[1], tenant)
    return 'stale'
  end
  local line, running = KEYS[1 + 2 * k], KEYS[2 + 2 * k]
  if redis.call('SCARD', running) >= tonumber(ARGV[3]) then
    redis.call('RPUSH', KEYS[1], tenant)
    held = 1
  else
    local got = redis.call('LPOP', line, 2)  -- the job and, if there is one, the next: whether more wait
    if got then
      local aid, more = got[1], 0
      if got[2] then
        redis.call('LPUSH', line, got[2])
        redis.call('RPUSH', KEYS[1], tenant)
        more = 1
      end
      redis.call('HSET', KEYS[2], aid, cjson.encode({worker = ARGV[1], tenant = tenant, beat = tonumber(ARGV[2])}))
      redis.call('SADD', running, aid)
      return {aid, tenant, held, more}
    end
  end
end
return {'', '', held, 0}
"""

# A tenant is in the rotation exactly while its line holds a job: it joins when its line goes
# from empty to one job (enqueue), and leaves when a claim takes its last job or a delete empties
# its line (forget). So enqueue needs no search of the rotation.

# KEYS: the tenant's line, the rotation, inflight, the tenant's running set.
# ARGV: id, tenant, front (1: a job put back, out of flight; 0: a new one). Puts a job in line.
_ENQUEUE = """
local n
if ARGV[3] == '1' then
  n = redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
else
  n = redis.call('RPUSH', KEYS[1], ARGV[1])
end
if n == 1 then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: the tenant's line, the rotation, inflight, the tenant's running set; ARGV: id, tenant.
# A deleted adaptation's job out of line and out of flight; the tenant out of the rotation if its
# line is now empty.
_FORGET = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 and redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, ARGV[2])
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
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
        self._rotation: list[str] = []  # the tenants last read from the rotation: the claim's keys until it goes stale
        self._enqueue = r.register_script(_ENQUEUE)
        self._forget = r.register_script(_FORGET)

    def enqueue(self, aid: str, tenant: str, front: bool = False) -> None:
        """Put the job in its tenant's line (at the front: a job put back) and out of flight."""
        k = [keys.pending(tenant), keys.ROTATION, keys.INFLIGHT, keys.running(tenant)]
        self._enqueue(keys=k, args=[aid, tenant, "1" if front else "0"])

    def claim(self, worker: str, max_running: int) -> tuple[str, str, bool, bool]:
        """-> (id, tenant, held, more) of the next job in the rotation whose tenant runs fewer than
        `max_running` jobs, now in flight; id "" when there is none. held: a tenant at its limit
        was passed over (its job will want a ticket once one of its jobs ends); more: the tenant
        has more jobs in line."""
        tenants, held = self._rotation, False
        for _ in range(5):
            if tenants:
                k = [keys.ROTATION, keys.INFLIGHT] + [x for t in tenants for x in (keys.pending(t), keys.running(t))]
                got = self._claim(keys=k, args=[worker, time.time(), max_running, *tenants])
                if got != b"stale":  # every tenant in the rotation was among those given
                    return got[0].decode(), got[1].decode(), held or bool(got[2]), bool(got[3])
                held = True  # a stale turn may have passed over a tenant at its limit
            tenants = self._rotation = list(dict.fromkeys(t.decode() for t in self.r.lrange(keys.ROTATION, 0, -1)))
            if not tenants:
                return "", "", held, False
        return "", "", held, False  # the rotation changed under each of five reads: another ticket will come

    def beat(self, aid: str, worker: str, tenant: str) -> None:
        self.r.hset(keys.INFLIGHT, aid, json.dumps({"worker": worker, "tenant": tenant, "beat": time.time()}))

    def finish(self, aid: str, tenant: str) -> None:
        """A job that ended (or will never run): out of flight and out of the tenant's jobs."""
        p = self.r.pipeline(transaction=False)
        p.hdel(keys.INFLIGHT, aid)
        p.srem(keys.jobs(tenant), aid)
        p.srem(keys.running(tenant), aid)
        p.execute()

    def forget(self, aid: str, tenant: str) -> None:
        """A deleted adaptation: out of the line too."""
        k = [keys.pending(tenant), keys.ROTATION, keys.INFLIGHT, keys.running(tenant)]
        self._forget(keys=k, args=[aid, tenant])
        self.r.srem(keys.jobs(tenant), aid)

    def waiting(self, tenant: str) -> int:
        """The tenant's jobs in line, not yet claimed."""
        return int(self.r.llen(keys.pending(tenant)))

    def backlog(self) -> int:
        """Jobs in line, every tenant's."""
        tenants = {t.decode() for t in self.r.lrange(keys.ROTATION, 0, -1)}
        if not tenants:
            return 0
        p = self.r.pipeline(transaction=False)
        for t in tenants:
            p.llen(keys.pending(t))
        return sum(p.execute())

    def in_flight(self) -> int:
        """Jobs claimed by a worker: with `backlog`, the work there is (what KEDA scales workers on)."""
        return int(self.r.hlen(keys.INFLIGHT))

    def dead(self, alive: set[str], stale_seconds: float) -> list[tuple[str, str]]:
        """(id, tenant) of the jobs in flight whose worker is not alive or whose beat is older
        than `stale_seconds`."""
        now, found = time.time(), []
        for aid, raw in self.r.hgetall(keys.INFLIGHT).items():
            held = json.loads(raw)
            if held["worker"] not in alive or now - held["beat"] > stale_seconds:
                found.append((aid.decode(), held["tenant"]))
        return found
