"""Fair job scheduling on top of Celery: which job a worker runs next.

A Celery message is a ticket, not a job: creating an adaptation appends its id to its
tenant's line and sends one ticket; a worker holding a ticket claims the next job of the
next tenant in a rotation (`claim`), so one tenant's backlog delays another tenant's job
by at most one job per worker, however long the backlog.

A lone tenant runs on every worker. While another tenant is active (one of its jobs was
claimed in the last `tenant_active_seconds`), one tenant runs at most all workers but
`tenant_reserved_workers` (1) at a time (`max_running`), so the active tenant's next job finds
a free worker. And a running job yields between its slices (worker/tasks.py): when another
tenant's job waits and no worker is free, the worker runs it at once and the long job waits at
its next pause, so a short job waits about a slice behind a long one, not the whole job.
`tenant_active_seconds` 0 makes the reservation hard (a lone tenant leaves the workers too).

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

# A line holds entries: a job's id, or for a job that may adapt with others its id and batch key
# (app/core/adaptation.py), "ID/KEY" (`entry`). The key travels with the job at no extra command.

# KEYS: rotation, the tenants with flights, the tenants active lately, then (line, flights) of each
# tenant named in ARGV[6..], in the order read from the rotation. ARGV: worker, now, the most jobs
# one tenant may run at once while another is active, for how long a tenant counts as active after
# its last claim (seconds; 0: always, a hard reservation), a JSON list of tenants to pass over (those
# whose job is yielding to others: they go to the back), then the rotation as last read (it holds
# each tenant once).
# -> {id, tenant, held, more, batch key} of the claimed job, or {'', '', held, 0, ''} when none can
# be claimed (held: 1 when a tenant at its limit was passed over; more: 1 when the tenant has more
# jobs in line); 'stale' when the rotation holds a tenant whose keys were not passed (it changed
# since it was read: read it again). A tenant at its limit goes to the back of the rotation with
# its jobs still in line; a lone tenant (no other active) has no limit. The limit counts the workers
# a tenant's claimed jobs are on: jobs riding in a batch (`_CLAIM_BATCH`) count for none.
_CLAIM = """
local given, passed = {}, {}
for i = 6, #ARGV do given[ARGV[i]] = i - 5 end
for _, t in ipairs(cjson.decode(ARGV[5])) do passed[t] = true end
local now, window = tonumber(ARGV[2]), tonumber(ARGV[4])
local function others_active(tenant)
  if window == 0 then return true end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[3])
  if redis.call('ZSCORE', KEYS[3], tenant) then n = n - 1 end
  return n > 0
end
local function workers_used(flights)  -- jobs riding in another's batch use no worker of their own
  local seen, n = {}, 0
  for _, v in ipairs(redis.call('HVALS', flights)) do
    local f = cjson.decode(v)
    if not f.rider and not seen[f.worker] then seen[f.worker], n = true, n + 1 end
  end
  return n
end
local held = 0
for _ = 5, #ARGV do  -- one more turn than tenants given: a tenant that joined since shows as stale
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then break end
  local k = given[tenant]
  if not k then
    redis.call('LPUSH', KEYS[1], tenant)
    return 'stale'
  end
  local line, flights = KEYS[2 + 2 * k], KEYS[3 + 2 * k]
  local running = redis.call('HLEN', flights)
  if passed[tenant] then
    redis.call('RPUSH', KEYS[1], tenant)
  elseif running >= tonumber(ARGV[3]) and others_active(tenant) and workers_used(flights) >= tonumber(ARGV[3]) then
    redis.call('RPUSH', KEYS[1], tenant)
    held = 1
  else
    local got = redis.call('LPOP', line, 2)  -- the job and, if there is one, the next: whether more wait
    if got then
      local aid, batch = string.match(got[1], '^([^/]*)/?(.*)$')
      local more = 0
      if got[2] then
        redis.call('LPUSH', line, got[2])
        redis.call('RPUSH', KEYS[1], tenant)
        more = 1
      end
      redis.call('HSET', flights, aid, cjson.encode({worker = ARGV[1], tenant = tenant, beat = now}))
      if running == 0 then redis.call('SADD', KEYS[2], tenant) end
      redis.call('ZADD', KEYS[3], now, tenant)
      return {aid, tenant, held, more, batch}
    end
  end
end
return {'', '', held, 0, ''}
"""

# Keys as the claim's. ARGV: worker, now, a batch key, the most jobs to claim, then the rotation as
# last read. Claims, in turns of the rotation, the job at the head of each tenant's line whose batch
# key is the one given and that is not the tenant's last (a tenant whose next job differs, or who has
# one job waiting, is passed over, its line untouched), until that many are claimed or a turn claims
# none. Batches are for backlogs: a job that waits alone is claimed alone, and ends as soon. Tenants'
# running limits do not apply: a batch rides on the worker its first job claimed. -> {id, tenant,
# more, ...} of each job claimed; {} when the rotation changed since it was read (then nothing more
# is claimed).
_CLAIM_BATCH = """
local given = {}
for i = 5, #ARGV do given[ARGV[i]] = i - 4 end
local out, want, wanted = {}, tonumber(ARGV[4]), '/' .. ARGV[3]
while want > 0 do
  local claimed = 0
  for _ = 1, redis.call('LLEN', KEYS[1]) do
    if want == 0 then break end
    local tenant = redis.call('LPOP', KEYS[1])
    local k = given[tenant]
    if not k then
      redis.call('LPUSH', KEYS[1], tenant)
      return out
    end
    local line, flights = KEYS[2 + 2 * k], KEYS[3 + 2 * k]
    local e = redis.call('LINDEX', line, 0)
    if e and string.sub(e, -#wanted) == wanted and redis.call('LLEN', line) > 1 then
      local aid = string.sub(e, 1, #e - #wanted)
      redis.call('LPOP', line)
      local more = 1
      redis.call('RPUSH', KEYS[1], tenant)
      if redis.call('HLEN', flights) == 0 then redis.call('SADD', KEYS[2], tenant) end
      local flight = {worker = ARGV[1], tenant = tenant, beat = tonumber(ARGV[2]), rider = true}
      redis.call('HSET', flights, aid, cjson.encode(flight))
      redis.call('ZADD', KEYS[3], ARGV[2], tenant)
      for _, v in ipairs({aid, tenant, more}) do out[#out + 1] = v end
      claimed, want = claimed + 1, want - 1
    else
      redis.call('RPUSH', KEYS[1], tenant)
    end
  end
  if claimed == 0 then break end
end
return out
"""

# A tenant is in the rotation exactly while its line holds a job: it joins when its line goes
# from empty to one job (enqueue), and leaves when a claim takes its last job or a delete empties
# its line (forget). So enqueue needs no search of the rotation.

# KEYS: the tenant's line, the rotation, its flights.
# ARGV: the job's entry, tenant, front (1: a job put back, out of flight; 0: a new one), the most
# jobs the tenant may have queued or running (0: no limit), its id. Puts a job in line. -> 1, or 0
# when that would be more than the most (nothing written).
_ENQUEUE = """
local n
if ARGV[3] == '1' then
  n = redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[5])
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

# KEYS: the tenant's line, the rotation, its flights; ARGV: id, tenant, its entry. A deleted or
# cancelled adaptation's job out of line and out of flight; the tenant out of the rotation if its
# line is now empty.
_FORGET = """
if redis.call('LREM', KEYS[1], 0, ARGV[3]) > 0 and redis.call('LLEN', KEYS[1]) == 0 then
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


def entry(aid: str, batch: str = "") -> str:
    """A job as its line holds it: its id, and its batch key when it has one."""
    return f"{aid}/{batch}" if batch else aid


NO_LIMIT = 2**31


def max_running(workers_alive: int, reserved: int) -> int:
    """How many jobs one tenant may run at once while another is active, with `reserved` workers
    held back: all workers but those, at least one. Workers are counted by heartbeat (one per
    host name, each with --concurrency 1); the claim counts the workers a tenant's jobs are on,
    jobs riding in another's batch on none. With none reserved there is no limit (NO_LIMIT)."""
    return max(1, workers_alive - reserved)


class Scheduler:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._claim = r.register_script(_CLAIM)
        self._rotation: list[str] = []  # the tenants last read from the rotation: the claim's keys until it goes stale
        self._claim_batch = r.register_script(_CLAIM_BATCH)
        self._enqueue = r.register_script(_ENQUEUE)
        self._forget = r.register_script(_FORGET)
        self._tidy = r.register_script(_TIDY)

    def enqueue(self, aid: str, tenant: str, front: bool = False, most: int = 0, batch: str = "") -> bool:
        """Put the job in its tenant's line (at the front: a job put back, out of flight), with its
        batch key (`claim_batch`). -> False (and nothing written) when the tenant would have more
        than `most` jobs queued or running."""
        k = [keys.pending(tenant), keys.ROTATION, keys.flights(tenant)]
        return bool(self._enqueue(keys=k, args=[entry(aid, batch), tenant, "1" if front else "0", most, aid]))

    def claim(
        self, worker: str, max_running: int, exclude: tuple[str, ...] = (), active_seconds: float = 30.0
    ) -> tuple[str, str, bool, bool, str]:
        """-> (id, tenant, held, more, batch key) of the next job in the rotation whose tenant is not
        in `exclude` and runs fewer than `max_running` jobs or is alone (no other tenant claimed
        from in the last `active_seconds`; 0: never alone), now in flight; id "" when there is
        none. held: a tenant at its limit was passed over (its job will want a ticket once one of
        its jobs ends); more: the tenant has more jobs in line."""
        tenants, held, passed = self._rotation, False, json.dumps(list(exclude))
        for _ in range(5):
            if tenants:
                args = [worker, time.time(), max_running, active_seconds, passed, *tenants]
                got = self._claim(keys=self._keys(tenants), args=args)
                if got != b"stale":  # every tenant in the rotation was among those given
                    return got[0].decode(), got[1].decode(), held or bool(got[2]), bool(got[3]), got[4].decode()
                held = True  # a stale turn may have passed over a tenant at its limit
            tenants = self._read_rotation()
            if not tenants:
                return "", "", held, False, ""
        return "", "", held, False, ""  # the rotation changed under each of five reads: another ticket will come

    def claim_batch(self, worker: str, batch: str, n: int) -> list[tuple[str, str, bool]]:
        """Up to n more jobs whose batch key is `batch`, each the next in its tenant's line, taken in
        turns of the rotation (fair across tenants), now in flight. -> [(id, tenant, more)]."""
        tenants = self._rotation or self._read_rotation()
        if not tenants or n < 1:
            return []
        got = self._claim_batch(keys=self._keys(tenants), args=[worker, time.time(), batch, n, *tenants])
        if not got:  # nothing to take, or a stale rotation: read afresh for the next claim
            self._rotation = []
        return [(got[i].decode(), got[i + 1].decode(), bool(got[i + 2])) for i in range(0, len(got), 3)]

    def _keys(self, tenants: list[str]) -> list[str]:
        """The claim scripts' keys for the rotation as read."""
        return [
            keys.ROTATION,
            keys.FLYING,
            keys.ACTIVE,
            *(x for t in tenants for x in (keys.pending(t), keys.flights(t))),
        ]

    def _read_rotation(self) -> list[str]:
        self._rotation = list(dict.fromkeys(t.decode() for t in self.r.lrange(keys.ROTATION, 0, -1)))
        return self._rotation

    def beat(self, aid: str, worker: str, tenant: str, rider: bool = False) -> None:
        flight = {"worker": worker, "tenant": tenant, "beat": time.time()} | ({"rider": True} if rider else {})
        self.r.hset(keys.flights(tenant), aid, json.dumps(flight))

    def finish(self, aid: str, tenant: str) -> None:
        """A job that ended (or will never run): out of flight."""
        self.r.hdel(keys.flights(tenant), aid)

    def forget(self, aid: str, tenant: str, batch: str = "") -> None:
        """A deleted or cancelled adaptation (of that batch key): out of the line too."""
        k = [keys.pending(tenant), keys.ROTATION, keys.flights(tenant)]
        self._forget(keys=k, args=[aid, tenant, entry(aid, batch)])

    def jobs(self, tenant: str) -> int:
        """The tenant's jobs queued or running (its quota of jobs)."""
        p = self.r.pipeline(transaction=False)
        p.llen(keys.pending(tenant))
        p.hlen(keys.flights(tenant))
        return sum(p.execute())

    def others_waiting(self, tenants: tuple[str, ...]) -> bool:
        """Whether a tenant not among `tenants` has jobs in line (one read of the rotation)."""
        return any(t.decode() not in tenants for t in self.r.lrange(keys.ROTATION, 0, -1))

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
