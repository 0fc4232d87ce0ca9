"""The job lifecycle: every move of an adaptation's job (states.py) happens here.

The API submits, cancels and deletes; a worker claims, starts, steps, and ends a job
(succeeded, failed, or put back after an unexpected error); any live worker's upkeep
(upkeep.py) reaps the jobs of dead workers, tops up tickets and sweeps expired ids.
Which Redis keys must agree, and why:
  - the record's status (ra:{T}:a:{id}) is the truth a client sees; it moves only through
    `move`, a compare-and-set checked against the table;
  - a job in line is in its tenant's line (ra:{q}:p:{T}) and its tenant in the rotation
    (ra:{q}:rr); a claimed one is in its tenant's flights (ra:{q}:f:{T}); the two are the
    tenant's jobs (its quota). `finish` takes a job out of flight once it ends; a cancel or
    a delete takes it out of line too;
  - a job in line has a ticket in the broker; tickets lost with a worker or a restarted
    broker are sent again (`top_up`), and a surplus ticket claims nothing and is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis

from .. import codecs, keys, stats
from ..adaptation import batch_key
from ..config import Settings
from ..store import Store, event
from . import heartbeats
from .scheduler import NO_LIMIT, Scheduler, max_running
from .states import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, sources
from .tickets import Tickets

log = logging.getLogger("rapid_adapt.jobs")
STALE_SECONDS = 30.0  # a job in flight whose own beat is this old is not running, whatever its worker's heartbeat
FLUSH_SECONDS = 0.25  # a running job's step events reach Redis (and a cancel reaches the job) this often


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    """A job a worker claimed: which, by whom, and once started its record and support set."""

    aid: str
    tenant: str
    worker: str
    resumed: bool = False  # retried after a Redis error: its record may already say running
    record: dict = field(default_factory=dict)
    started: float = 0.0  # perf_counter at start
    started_ts: float = 0.0  # unix time at start
    held: bool = False  # a job of a tenant at its running limit may lack a ticket: top up after this one
    more: bool = False  # its tenant had more jobs in line when it was claimed
    batch: str = ""  # its batch key: jobs of the same key may adapt together (`claim_batch`)
    rider: bool = False  # claimed into another job's batch: it uses no worker of its own
    unsent: list = field(default_factory=list)  # step events not yet in Redis
    flushed: float = 0.0  # perf_counter of the last flush


class Jobs:
    def __init__(self, store: Store, tickets: Tickets, settings: Settings):
        self.store, self.tickets, self.settings = store, tickets, settings
        self.scheduler = Scheduler(store.r)
        self.tally = stats.Tally(store.r)  # a worker's job ends, written at most once a second
        self._alive = (0.0, 0)  # (read at, workers alive): read at most once a heartbeat

    def move(
        self,
        tenant: str,
        aid: str,
        target: str,
        by: str,
        events: list = (),
        replicas: int = 0,
        charge: int = 0,
        record: dict | None = None,
        **fields,
    ) -> str | None:
        """Set the status to `target` (and `fields`), append `events` and charge the tenant
        `charge` bytes, if the table lets `by` move it from the status it has; a final status is
        published to the requests waiting for it (with `record`, the record it leaves, so that
        they need not read it), after `replicas` (store.transition). -> the status it had (the
        move happened iff that is one of the table's sources), None when the adaptation is gone."""
        return self.store.transition(
            tenant,
            aid,
            sources(target, by),
            events=events,
            replicas=replicas,
            notice=(record or True) if target in TERMINAL else False,
            charge=charge,
            status=target,
            **fields,
        )

    # ---- the API's -----------------------------------------------------------
    def submit(self, record: dict, support: dict, ttl: int, idempotency=None) -> tuple[str, bool]:
        """Store a new adaptation, put its job in line with its batch key and send its ticket.
        -> (id, whether it is new); an idempotent retry returns the stored one. A tenant at its
        quota of jobs, or a broker that refuses the ticket, leaves nothing stored and raises."""
        aid, created = self.store.create(record, support, ttl, idempotency)
        if created:
            tenant, batch = record["tenant"], batch_key(record)
            if not self.scheduler.enqueue(aid, tenant, most=self.settings.tenant_max_jobs, batch=batch):
                self.delete(self.store.get(tenant, aid) or record)
                raise self.store.exceeded(tenant, "tenant_max_jobs")
            try:
                self.tickets.send()
            except Exception:
                self.delete(record)
                raise
        return aid, created

    def cancel(self, record: dict) -> str | None:
        """queued or running -> cancelled. -> the status it had."""
        aid, tenant = record["id"], record["tenant"]
        had = self.move(tenant, aid, CANCELLED, "client", events=[event("cancelled")], finished_at=now_iso())
        if had in (QUEUED, RUNNING):
            self.scheduler.forget(aid, tenant, batch_key(record))  # out of line at once: no longer one of its jobs
            stats.record_outcome(self.store.r, CANCELLED, None, tenant=tenant, model=record.get("model"))
        return had

    def delete(self, record: dict) -> None:
        """Everything of the adaptation gone at once, its job out of line."""
        self.store.delete(record)
        self.scheduler.forget(record["id"], record["tenant"], batch_key(record))

    # ---- a worker's ----------------------------------------------------------
    def claim(self, worker: str, exclude: tuple[str, ...] = ()) -> Job | None:
        """The next job of the next tenant whose running jobs are under its limit, now in flight;
        `exclude`: tenants passed over (a yielding job's own: worker/tasks.py)."""
        active = self.settings.tenant_active_seconds
        aid, tenant, held, more, batch = self.scheduler.claim(worker, self.max_running(), exclude, active)
        return Job(aid, tenant, worker, held=held, more=more, batch=batch) if aid else None

    def claim_batch(self, job: Job, n: int) -> list[Job]:
        """Up to n more jobs of `job`'s batch key (fairly across tenants), now in flight."""
        got = self.scheduler.claim_batch(job.worker, job.batch, n)
        return [Job(aid, tenant, job.worker, more=more, batch=job.batch, rider=True) for aid, tenant, more in got]

    def max_running(self) -> int:
        """The most jobs one tenant may run at once while another is active (scheduler.max_running)."""
        reserved = self.settings.tenant_reserved_workers
        return max_running(self.workers_alive(), reserved) if reserved else NO_LIMIT

    def workers_alive(self) -> int:
        """Workers with a fresh heartbeat, read at most once a heartbeat."""
        read, alive = self._alive
        if time.monotonic() - read > self.settings.worker_heartbeat_seconds:
            alive = len(heartbeats.alive(self.store.r, self.settings.heartbeat_window))
            self._alive = (time.monotonic(), alive)
        return alive

    def start(self, job: Job) -> dict | None:
        """queued -> running, one more attempt, its started event written, in one script (the
        table's only move to running, `sources(RUNNING, "worker")`, checked there). -> its support
        set, or None when the job is not to run (deleted, expired, cancelled while queued, or
        already done by a twin run)."""
        started_at = now_iso()
        got = self.store.start(job.tenant, job.aid, started_at, job.resumed)
        had, record, data = got if got else (None, {}, None)
        if not (had in sources(RUNNING, "worker") or (had == RUNNING and job.resumed)) or data is None:
            self.scheduler.finish(job.aid, job.tenant)
            return None
        fields = {"status": RUNNING, "started_at": started_at, "attempts": record.get("attempts", 0) + 1}
        job.record, job.started, job.started_ts = record | fields, time.perf_counter(), time.time()
        job.flushed, job.unsent = job.started, []
        return codecs.bytes_to_support(data)

    def step(self, job: Job, k: int, loss: float) -> bool:
        """A step's event, sent with those before it every FLUSH_SECONDS (a short job's steps reach
        Redis with its end, in one write). -> False when the job was cancelled or deleted meanwhile:
        stop."""
        job.unsent.append(event("step", step=k + 1, loss=round(loss, 6)))
        if time.perf_counter() - job.flushed < FLUSH_SECONDS:
            return True
        sent, job.unsent, job.flushed = job.unsent, [], time.perf_counter()
        return self.store.step(job.tenant, job.aid, sent) not in (None, CANCELLED)

    def background(self, job: Job) -> bool:
        """Whether the job's tenant had more jobs waiting: then it can wait for others' (priority.py)."""
        return job.more

    def beating(self, job: Job) -> contextlib.AbstractContextManager:
        """The job's beat, from a thread for as long as it runs: however slow a step, a job that
        beats is running, and one that stopped beating (its task ended or its process died) is
        put back by the reaper."""

        def beat():
            with contextlib.suppress(redis.RedisError):
                self.scheduler.beat(job.aid, job.worker, job.tenant, job.rider)

        return alongside(self.settings.worker_heartbeat_seconds, beat, f"beat-{job.aid}")

    def succeed(self, job: Job, fast: dict, metrics: dict) -> str:
        """Store the weights, then running -> succeeded. A job cancelled or deleted meanwhile
        leaves no weights behind."""
        metrics["weights_bytes"] = self.store.put_weights(job.record, fast)
        done = {"finished_at": now_iso(), "metrics": metrics, "steps": metrics["steps"]}
        ended = [*job.unsent, event("succeeded", mode=metrics["mode"], steps=metrics["steps"])]
        replicas, charge = self.settings.store_replicas, metrics["weights_bytes"]
        record = job.record | done | {"status": SUCCEEDED}
        had = self.move(job.tenant, job.aid, SUCCEEDED, "worker", ended, replicas, charge, record, **done)
        self.scheduler.finish(job.aid, job.tenant)
        if had != RUNNING:
            if had != SUCCEEDED:  # cancelled or deleted meanwhile (not a twin run that finished first)
                self.store.drop_weights(job.aid)
            return "gone"
        self.tally.add(SUCCEEDED, time.perf_counter() - job.started, **about(job))
        log.info(
            "adaptation succeeded",
            extra={
                "adaptation_id": job.aid,
                "tenant": job.tenant,
                "status": SUCCEEDED,
                "duration_ms": metrics["adaptation_ms"],
            },
        )
        return SUCCEEDED

    def fail(self, job: Job, code: str, message: str, by: str = "worker") -> str:
        """running -> failed with the reason. A Redis error leaves the job to the reaper."""
        fields = {"finished_at": now_iso(), "error": {"code": code, "message": message}}
        try:
            ended = [*job.unsent, event("failed", code=code)]
            if self.move(job.tenant, job.aid, FAILED, by, events=ended, **fields) == RUNNING:
                seconds = time.perf_counter() - job.started if job.started else None
                self.tally.add(FAILED, seconds, **about(job))
            self.scheduler.finish(job.aid, job.tenant)
        except redis.RedisError:
            pass  # still in flight: the reaper puts the job back; it is not lost
        log.warning(
            "adaptation failed", extra={"adaptation_id": job.aid, "tenant": job.tenant, "status": FAILED, "error": code}
        )
        return FAILED

    def release(self, job: Job) -> None:
        """A job that stopped without a status of its own to set (cancelled or deleted meanwhile)."""
        self.scheduler.finish(job.aid, job.tenant)

    def crashed(self, job: Job, exc: BaseException) -> str:
        """An unexpected error (a bug, CUDA out of memory): back at the front of its line while tries
        are left, else failed with `too_many_attempts` naming the last error."""
        log.error("job raised", exc_info=exc, extra={"adaptation_id": job.aid, "tenant": job.tenant})
        return self.put_back(job.aid, job.tenant, "worker", f"{exc.__class__.__name__}: {exc}", job)

    def put_back(self, aid: str, tenant: str, by: str, reason: str, job: Job | None = None) -> str:
        """running -> queued (at the front of its line, with a ticket), or -> failed on the last try."""
        record = self.store.get(tenant, aid)
        if record is None or record["status"] in TERMINAL:
            self.scheduler.finish(aid, tenant)
            return "gone"
        tries = record.get("attempts", 0)
        if record["status"] == RUNNING and tries >= self.settings.job_max_attempts:
            message = f"tried {tries} times (job_max_attempts); the last try ended with: {reason}"
            return self.fail(job or Job(aid, tenant, by, record=record), "too_many_attempts", message, by)
        if self.move(tenant, aid, QUEUED, by) in (QUEUED, RUNNING):  # queued: claimed, never started
            self.scheduler.enqueue(aid, tenant, front=True, batch=batch_key(record))
            unsent = job.unsent if job else []  # the steps of a job that raised, as far as it got
            self.store.add_events(tenant, aid, *unsent, event("requeued", reason=reason[:200]))
            self.tickets.send()
            return QUEUED
        self.scheduler.finish(aid, tenant)
        return "gone"

    # ---- upkeep, by any live worker (upkeep.py runs them) ---------------------
    def reap(self, name: str) -> list[str] | None:
        """One worker at a time (a lock of two heartbeats): put back, or fail on their last try, the
        jobs in flight that no live worker holds. -> their ids; None when it is another's turn."""
        every = self.settings.worker_heartbeat_seconds
        if not self.store.r.set(keys.REAPER, name, nx=True, px=int(2000 * every)):
            return None
        window = self.settings.heartbeat_window
        alive = set(heartbeats.alive(self.store.r, window))
        dead = self.scheduler.dead(alive, max(STALE_SECONDS, window))
        for aid, tenant in dead:
            self.put_back(aid, tenant, "reaper", "its worker stopped sending heartbeats")
        if dead:
            log.warning("jobs put back after their worker died", extra={"adaptation_id": ",".join(a for a, _ in dead)})
        return [a for a, _ in dead]

    def top_up(self) -> int:
        """Send the tickets that jobs in line lack. -> how many."""
        return self.tickets.top_up(self.scheduler.backlog())

    def sweep(self, name: str) -> int:
        """One worker every `sweep_seconds`: drop expired adaptations' ids from every tenant's
        indexes, so Redis returns to its size once TTLs pass even when no one lists or creates.
        -> tenants looked at."""
        if self.store.r.set(keys.SWEEPER, name, nx=True, px=int(1000 * self.settings.sweep_seconds)):
            return self.store.prune_all()
        return 0


@contextlib.contextmanager
def alongside(every: float, task, name: str, first: float | None = None) -> Iterator[None]:
    """`task()` every `every` seconds (the first after `first`, else `every`) on a thread of its
    own while the block runs; the thread is stopped, and joined, when the block ends."""
    stop = threading.Event()

    def loop():
        wait = every if first is None else first
        while not stop.wait(wait):
            task()
            wait = every

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def about(job: Job) -> dict:
    """What /metrics counts of a job's end besides its status and run time (stats.fields)."""
    created, now = job.record.get("created_ts"), time.time()
    return {
        "tenant": job.tenant,
        "model": job.record.get("model"),
        "queued": job.started_ts - created if created and job.started_ts else None,
        "end_to_end": now - created if created else None,
    }


def name_of_this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
