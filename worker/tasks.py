"""The adaptation task: a ticket claims a job (app/core/jobs/), runs `adapt` on its
stored support set, and ends it through the lifecycle.

It runs under late acks; a job whose worker dies is put back by a live worker's reaper
within seconds and done again from the stored support set (adaptation is deterministic:
a job done twice writes the same weights). A Redis error mid-job retries the same job
with backoff; a refused write (a full Redis) fails it with its reason; an unexpected
error puts it back until `job_max_attempts` tries, then fails it; the worker process
never exits on any of these. A job whose tenant has more jobs waiting runs at
background CPU priority (app/core/priority.py): another tenant's job on the next worker,
and the API, come first."""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from app.core import priority, tracing
from app.core.adaptation import device, run_adaptation
from app.core.config import get_settings
from app.core.jobs import TASK_NAME, Job
from models.registry import BaseChanged

from .celery_app import app, jobs, registry

log = logging.getLogger("rapid_adapt.worker")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class Stopped(Exception):
    """The adaptation was cancelled or deleted while running."""


@app.task(name=TASK_NAME, bind=True, max_retries=8)
def adapt_job(self, *_legacy, resume: list | None = None) -> str:
    """One ticket: claim a job (or, retried after a Redis error, resume the one claimed) and run it.
    A ticket carries nothing (`_legacy` takes the id that tickets of earlier versions carried)."""
    job = Job(*resume, resumed=True) if resume else None
    try:
        if job is None:
            job = jobs().claim(self.request.hostname or "worker")
            if job is None:
                return "idle"  # every job in line was taken by other tickets
        outcome = run(job)
        if job.held:  # jobs a tenant's limit held back get their tickets now, not at the reaper's turn
            jobs().top_up()
        return outcome
    except TRANSIENT as exc:
        log.warning("redis unavailable, retrying", extra={"adaptation_id": job and job.aid, "error": str(exc)})
        resume = [job.aid, job.tenant, job.worker] if job else None
        raise self.retry(exc=exc, countdown=min(2**self.request.retries, 10), kwargs={"resume": resume}) from None
    except redis.ResponseError as exc:  # a refused write (OOM): the job fails with the reason
        if job is None:
            raise
        return jobs().fail(job, "storage_refused", f"Redis refused a write: {exc}")


def run(job: Job) -> str:
    """Start the job, and run it inside its trace span (tracing.py) when there is one."""
    began = time.time_ns()
    support = jobs().start(job)
    if support is None:
        return "skipped"  # deleted, expired, cancelled while queued, or done by a twin run
    with tracing.job_span(job.record, began) as span:
        if span is not None:  # the start, done before the record (and its trace) was read
            tracing.tracer.start_span("store start", start_time=began).end()
        return adapt_started(job, support)


def adapt_started(job: Job, support: dict) -> str:
    settings, lifecycle = get_settings(), jobs()

    def on_step(k: int, loss: float) -> None:
        if not lifecycle.step(job, k, loss):
            raise Stopped

    behind = lifecycle.background(job)
    job.held = job.held or behind  # a ticket taken while this job ran may have found its tenant at its limit
    background = settings.background_nice > 0 and behind
    priority.set_session(settings.background_nice if background else 0)
    try:
        with lifecycle.beating(job):
            fast, metrics = run_adaptation(registry(), job.record, support, device(), on_step=on_step)
    except Stopped:
        lifecycle.release(job)
        log.info("adaptation stopped", extra={"adaptation_id": job.aid, "status": "cancelled"})
        return "cancelled"
    except (KeyError, BaseChanged):
        message = f"the base {job.record['model']} was replaced or removed before this job ran: adapt again"
        return lifecycle.fail(job, "base_changed", message)
    except ValueError as exc:
        return lifecycle.fail(job, "invalid_support", str(exc))
    except SoftTimeLimitExceeded:
        return lifecycle.fail(job, "timeout", f"adaptation took longer than {settings.job_soft_time_limit}s")
    except redis.RedisError:
        raise  # the task retries (transient) or fails the job (refused write)
    except Exception as exc:  # a bug, CUDA out of memory: tried again, at most job_max_attempts times
        return lifecycle.crashed(job, exc)
    metrics["cpu_priority"] = "background" if background else "normal"
    return lifecycle.succeed(job, fast, metrics)
