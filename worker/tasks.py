"""The adaptation job: support set from Redis -> `adapt` -> the changed tensors to Redis.

A Celery message is a ticket (app/core/scheduler.py): the task claims the next job of
the next tenant, runs it, and lets it go. It runs under late acks; a job whose worker
dies is put back by a live worker's reaper within seconds, and done again from the
stored support set (adaptation is deterministic: a job done twice writes the same
weights). A Redis error mid-job retries the same job with backoff, and a refused
write (a full Redis) fails the job with its reason; the worker process never exits on
either. A job whose tenant has more jobs waiting runs at background CPU priority
(app/core/priority.py): another tenant's job on the next worker, and the API, come first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import redis
from celery.exceptions import SoftTimeLimitExceeded

from app.core import heartbeats, priority, stats
from app.core.adaptation import device, run_adaptation
from app.core.config import get_settings
from app.core.jobs import TASK_NAME
from app.core.scheduler import max_running
from app.core.store import Store, event
from models import registry

from .celery_app import app, top_up_tickets

log = logging.getLogger("rapid_adapt.worker")
_store: Store | None = None
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def store() -> Store:
    global _store
    if _store is None:
        _store = Store(get_settings())
    return _store


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Stopped(Exception):
    """The adaptation was cancelled or deleted while running."""


@app.task(name=TASK_NAME, bind=True, max_retries=8)
def adapt_job(self, hint: str | None = None, resume: list | None = None) -> str:
    """One ticket: claim a job (or, retried after a Redis error, resume the one claimed) and run it."""
    s, worker = store(), self.request.hostname or "worker"
    claimed = resume
    try:
        if claimed is None:
            settings = get_settings()
            alive = len(heartbeats.alive(s.r, settings.heartbeat_window))
            got = s.scheduler.claim(worker, max_running(alive, settings.tenant_reserved_workers))
            if got is None:
                return "idle"  # every pending job was taken by other tickets
            claimed = list(got)
        outcome = run(s, *claimed, worker)
        top_up_tickets(s.scheduler)  # a job a tenant's limit held back gets its ticket now, not at the reaper's turn
        return outcome
    except TRANSIENT as exc:
        log.warning("redis unavailable, retrying", extra={"adaptation_id": claimed and claimed[0], "error": str(exc)})
        raise self.retry(exc=exc, countdown=min(2**self.request.retries, 10), args=[hint, claimed]) from None
    except redis.ResponseError as exc:  # a refused write (OOM): the job fails with the reason
        if claimed is None:
            raise
        return fail(s, claimed[0], claimed[1], time.perf_counter(), "storage_refused", f"Redis refused a write: {exc}")


def run(s: Store, aid: str, tenant: str, worker: str) -> str:
    settings = get_settings()
    record = s.get(aid)
    if record is None:
        s.scheduler.finish(aid, tenant)
        return "gone"  # deleted or expired before it ran
    if record["status"] in ("succeeded", "failed", "cancelled"):
        s.scheduler.finish(aid, tenant)
        return "skipped"  # a duplicate, or cancelled while queued: a cancelled job never runs
    started = time.perf_counter()
    attempts = record.get("attempts", 0) + 1
    fields = {"status": "running", "started_at": now(), "attempts": attempts}
    if s.transition(aid, ("queued", "running"), **fields) not in ("queued", "running"):
        s.scheduler.finish(aid, tenant)
        return "skipped"
    s.add_events(aid, event("started", attempt=attempts))
    support = s.support(aid)
    if support is None:
        s.scheduler.finish(aid, tenant)
        return "gone"

    def on_step(k: int, loss: float) -> None:
        if s.step(aid, event("step", step=k + 1, loss=round(loss, 6))) in (None, "cancelled"):
            raise Stopped

    background = settings.background_nice > 0 and s.scheduler.waiting(tenant) > 0
    priority.set_session(settings.background_nice if background else 0)
    try:
        with beating(s, aid, worker, tenant, settings.worker_heartbeat_seconds):
            fast, metrics = run_adaptation(record, support, device(), on_step=on_step)
    except Stopped:
        s.scheduler.finish(aid, tenant)
        log.info("adaptation stopped", extra={"adaptation_id": aid, "status": "cancelled"})
        return "cancelled"
    except (KeyError, registry.BaseChanged):
        message = f"the base {record['model']} was replaced or removed before this job ran: adapt again"
        return fail(s, aid, tenant, started, "base_changed", message)
    except ValueError as exc:
        return fail(s, aid, tenant, started, "invalid_support", str(exc))
    except SoftTimeLimitExceeded:
        return fail(s, aid, tenant, started, "timeout", f"adaptation took longer than {settings.job_soft_time_limit}s")
    metrics["weights_bytes"] = s.put_weights(aid, fast, s.ttl(aid), tenant)
    metrics["cpu_priority"] = "background" if background else "normal"
    done = {"status": "succeeded", "finished_at": now(), "metrics": metrics, "steps": metrics["steps"]}
    had = s.transition(aid, ("running",), **done)
    s.scheduler.finish(aid, tenant)
    if had != "running":
        if had != "succeeded":  # cancelled or deleted meanwhile (not a twin run that finished first)
            s.drop_weights(aid)
        return "gone"
    s.add_events(aid, event("succeeded", mode=metrics["mode"], steps=metrics["steps"]))
    stats.record_outcome(s.r, "succeeded", time.perf_counter() - started)
    log.info(
        "adaptation succeeded",
        extra={"adaptation_id": aid, "tenant": tenant, "status": "succeeded", "duration_ms": metrics["adaptation_ms"]},
    )
    return "succeeded"


@contextmanager
def beating(s: Store, aid: str, worker: str, tenant: str, every: float):
    """The job's beat, from a thread for as long as it runs: however slow a step (a 500-image
    support set on a busy machine), a job that beats is running, and one that stopped beating
    (its task ended or its process died) is put back by the reaper within seconds."""
    stop = threading.Event()

    def beat():
        while not stop.wait(every):
            with contextlib.suppress(redis.RedisError):
                s.scheduler.beat(aid, worker, tenant)

    thread = threading.Thread(target=beat, name=f"beat-{aid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail(s: Store, aid: str, tenant: str, started: float, code: str, message: str) -> str:
    fields = {"status": "failed", "finished_at": now(), "error": {"code": code, "message": message}}
    try:
        if s.transition(aid, ("queued", "running"), **fields) in ("queued", "running"):
            s.add_events(aid, event("failed", code=code))
            stats.record_outcome(s.r, "failed", time.perf_counter() - started)
        s.scheduler.finish(aid, tenant)
    except redis.RedisError:
        pass  # the reaper puts the job back; it is not lost
    log.warning("adaptation failed", extra={"adaptation_id": aid, "tenant": tenant, "status": "failed", "error": code})
    return "failed"
