"""Fair job scheduling on top of Celery: which job a worker runs next.

A Celery message is a ticket, not a job: creating an adaptation appends its id to its
tenant's line and sends one ticket; a worker holding a ticket claims the next job of the
next tenant in a rotation (`claim`), so one tenant's backlog delays another tenant's job
by at most one job per worker, however long the backlog.

One tenant runs at most all workers but `tenant_reserved_workers` (1) at a time
(`max_running`), so another tenant's job starts at once even while a tenant's long jobs
keep the other workers busy; the price is that a lone tenant uses one worker fewer.

A claimed job is in flight, in its tenant's flights (its count is what the limit reads),
with the worker that holds it and a beat that a thread refreshes for as long as the job
runs. `dead` names the jobs in flight that no live worker holds; the lifecycle
(lifecycle.py) puts them back or fails them.

A tenant's jobs, queued or running, are its line and its flights: the quota of jobs
(`tenant_max_jobs`) is checked there, by the enqueue, at once with the write.

Every script takes its keys as KEYS (names from app/core/keys.py), never building one."""

from __future__ import annotations

import json
import time

import redis

from .. import keys

# KEYS: rotation, the tenants with flights, then (line, flights) of each tenant named in ARGV[4..],
# in the order read from the rotation. ARGV: worker, now, the most jobs one tenant may run at once.
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
  local line, flights = KEYS[1 + 2 * k], KEYS[2 + 2 * k]
  local running = redis.call('HLEN', flights)
  if running >= tonumber(ARGV[3]) then
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
      redis.call('HSET', flights, aid, cjson.encode({worker = ARGV[1], tenant = tenant, beat = tonumber(ARGV[2])}))
      if running == 0 then redis.call('SADD', KEYS[2], tenant) end
      return {aid, tenant, held, more}
    end
  end
end
return {'', '', held, 0}
"""

# A tenant is in the rotation exactly while its line holds a job: it joins when its line goes
# from empty to one job (enqueue), and leaves when a claim takes its last job or a delete empties
# its line (forget). So enqueue needs no search of the rotation.

# KEYS: the tenant's line, the rotation, its flights.
# ARGV: id, tenant, front (1: a job put back, out of flight; 0: a new one), the most jobs the
# tenant may have queued or running (0: no limit). Puts a job in line. -> 1, or 0 when that
# would be more than the most (nothing written).
_ENQUEUE = """
local n
if ARGV[3] == '1' then
  n = redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  n = redis.call('RPUSH', KEYS[1], ARGV[1])
  local most = tonumber(ARGV[4])
  if most > 0 and n + redis.call('HLEN', KEYS[3]) > most then
    redis.call('RPOP', KEYS[1])
    return 0
  end
end
if n == 1 then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: the tenant's line, the rotation, its flights; ARGV: id, tenant. A deleted or cancelled
# adaptation's job out of line and out of flight; the tenant out of the rotation if its line is
# now empty.
_FORGET = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 and redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, ARGV[2])
end
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: the tenants with flights, then the flights of each tenant in ARGV. Drops the tenants
# whose flights are empty (the reaper, after reading them).
_TIDY = """
for i = 1, #ARGV do
  if redis.call('HLEN', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[1], ARGV[i]) end
end
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
        self._tidy = r.register_script(_TIDY)

    def enqueue(self, aid: str, tenant: str, front: bool = False, most: int = 0) -> bool:
        """Put the job in its tenant's line (at the front: a job put back, out of flight). -> False
        (and nothing written) when the tenant would have more than `most` jobs queued or running."""
        k = [keys.pending(tenant), keys.ROTATION, keys.flights(tenant)]
        return bool(self._enqueue(keys=k, args=[aid, tenant, "1" if front else "0", most]))

    def claim(self, worker: str, max_running: int) -> tuple[str, str, bool, bool]:
        """-> (id, tenant, held, more) of the next job in the rotation whose tenant runs fewer than
        `max_running` jobs, now in flight; id "" when there is none. held: a tenant at its limit
        was passed over (its job will want a ticket once one of its jobs ends); more: the tenant
        has more jobs in line."""
        tenants, held = self._rotation, False
        for _ in range(5):
            if tenants:
                k = [keys.ROTATION, keys.FLYING] + [x for t in tenants for x in (keys.pending(t), keys.flights(t))]
                got = self._claim(keys=k, args=[worker, time.time(), max_running, *tenants])
                if got != b"stale":  # every tenant in the rotation was among those given
                    return got[0].decode(), got[1].decode(), held or bool(got[2]), bool(got[3])
                held = True  # a stale turn may have passed over a tenant at its limit
            tenants = self._rotation = list(dict.fromkeys(t.decode() for t in self.r.lrange(keys.ROTATION, 0, -1)))
            if not tenants:
                return "", "", held, False
        return "", "", held, False  # the rotation changed under each of five reads: another ticket will come

    def beat(self, aid: str, worker: str, tenant: str) -> None:
        self.r.hset(keys.flights(tenant), aid, json.dumps({"worker": worker, "tenant": tenant, "beat": time.time()}))

    def finish(self, aid: str, tenant: str) -> None:
        """A job that ended (or will never run): out of flight."""
        self.r.hdel(keys.flights(tenant), aid)

    def forget(self, aid: str, tenant: str) -> None:
        """A deleted or cancelled adaptation: out of the line too."""
        self._forget(keys=[keys.pending(tenant), keys.ROTATION, keys.flights(tenant)], args=[aid, tenant])

    def jobs(self, tenant: str) -> int:
        """The tenant's jobs queued or running (its quota of jobs)."""
        p = self.r.pipeline(transaction=False)
        p.llen(keys.pending(tenant))
        p.hlen(keys.flights(tenant))
        return sum(p.execute())

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

    def flying(self) -> dict[str, dict[str, dict]]:
        """tenant -> {claimed job id -> {worker, tenant, beat}}, of every tenant with jobs in flight."""
        tenants = sorted(t.decode() for t in self.r.smembers(keys.FLYING))
        if not tenants:
            return {}
        p = self.r.pipeline(transaction=False)
        for t in tenants:
            p.hgetall(keys.flights(t))
        return {t: {a.decode(): json.loads(v) for a, v in held.items()} for t, held in zip(tenants, p.execute())}

    def in_flight(self) -> int:
        """Jobs claimed by a worker: with `backlog`, the work there is (what KEDA scales workers on)."""
        p = self.r.pipeline(transaction=False)
        for t in self.r.smembers(keys.FLYING):
            p.hlen(keys.flights(t.decode()))
        return sum(p.execute())

    def dead(self, alive: set[str], stale_seconds: float) -> list[tuple[str, str]]:
        """(id, tenant) of the jobs in flight whose worker is not alive or whose beat is older
        than `stale_seconds`; tenants with no flights left leave the set of those with flights."""
        now, found, flying = time.time(), [], self.flying()
        for tenant, held in flying.items():
            stale = lambda h: h["worker"] not in alive or now - h["beat"] > stale_seconds  # noqa: E731
            found += [(aid, tenant) for aid, h in held.items() if stale(h)]
        if idle := [t for t, held in flying.items() if not held]:
            self._tidy(keys=[keys.FLYING, *(keys.flights(t) for t in idle)], args=idle)
        return found
