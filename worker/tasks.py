"""The adaptation task: a ticket claims a job (app/core/jobs/), runs `adapt` on its
stored support set, and ends it through the lifecycle.

It runs under late acks; a job whose worker dies is put back by a live worker's reaper
within seconds and done again from the stored support set (adaptation is deterministic:
a job done twice writes the same weights). A Redis error mid-job retries the same job
with backoff; a refused write (a full Redis) fails it with its reason; an unexpected
error puts it back until `job_max_attempts` tries, then fails it; the worker process
never exits on any of these. A job whose tenant has more jobs waiting runs at
background CPU priority (app/core/priority.py): another tenant's job on the next worker,
and the API, come first.

A job runs in slices (`Slices`): when another tenant's job waits, the worker runs it at
once and the long job waits at its next pause (an embedding chunk, a step), so on a busy
worker a short job waits about a slice behind a long one, however long that is. Each job
computes on a thread of its own (`on_own_thread`), at its CPU priority."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery.exceptions import SoftTimeLimitExceeded

from app.core import priority, tracing
from app.core.adaptation import device, resolved_mode, run_adaptation, run_adaptations
from app.core.config import get_settings
from app.core.jobs import TASK_NAME, Job
from app.core.jobs.lifecycle import alongside
from models.registry import BaseChanged

from .celery_app import app, jobs, registry, worker_name

log = logging.getLogger("rapid_adapt.worker")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
T = TypeVar("T")


class Stopped(Exception):
    """The adaptation was cancelled or deleted while running."""


class Interrupted(Exception):
    """A job's thread stopped at a pause: the thread waiting for it was interrupted (the soft time limit)."""


def on_own_thread(nice: int, work: Callable[[Callable[[], None]], T], pause: Callable[[], None]) -> T:
    """work(pause) on a thread of its own at CPU priority `nice` -> what it returned (or raises what it raised).

    A thread per job, since a thread that lowered its priority cannot raise it again without
    privilege. The kernel weighs each thread by its nice value against the others of its group
    (docs in app/core/priority.py): a job at background priority yields the core to the job it
    was interrupted for (on the watcher's thread, at normal priority) instead of sharing it
    until its next pause, and to the API's interactive work where they share a session. The
    soft time limit, a signal raised on the waiting thread, stops the job at its next pause."""
    stop, done, out = threading.Event(), threading.Event(), {}
    context = contextvars.copy_context()  # the job's trace span

    def paused() -> None:
        if stop.is_set():
            raise Interrupted
        pause()

    def body() -> None:
        priority.renice_this_thread(nice)
        try:
            out["value"] = context.run(work, paused)
        except BaseException as exc:  # raised again on the waiting thread
            out["error"] = exc
        finally:
            done.set()

    threading.Thread(target=body, name="job", daemon=True).start()
    try:
        done.wait()  # not Thread.join: one interrupted can mark the thread ended while it runs (CPython gh-90882)
    except BaseException:
        stop.set()
        done.wait()
        raise
    if "error" in out:
        raise out["error"]
    return out["value"]


@app.task(name=TASK_NAME, bind=True, max_retries=8)
def adapt_job(self, *_legacy, resume: list | None = None) -> str:
    """One ticket: claim a job (or, retried after a Redis error, resume the one claimed) and run it.
    A ticket carries nothing (`_legacy` takes the id that tickets of earlier versions carried)."""
    job = Job(*resume, resumed=True) if resume else None
    try:
        if job is None:
            job = jobs().claim(worker_name(self.request.hostname or "worker"))
            if job is None:
                return "idle"  # every job in line was taken by other tickets
            n = get_settings().job_batch_max - 1
            if job.batch and job.more and n and (more := jobs().claim_batch(job, n)):  # a backlog: batch it
                return run_batch([job, *more])
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


def run_batch(batch: list[Job]) -> str:
    """Jobs of one batch key: those still to run and resolved to the fast mode adapt together
    (`run_adaptations`), the rest (an `auto` job resolved to fine-tune) one at a time after. A
    batch that raises runs again job by job, so each job ends with its own outcome."""
    lifecycle, started = jobs(), []
    for job in batch:
        if (support := lifecycle.start(job)) is not None:
            started.append((job, support))
    modes = {j.aid: resolved_mode(registry(), j.record, s, device()) for j, s in started}
    together = [p for p in started if modes[p[0].aid] == "fast"]
    alone = [p for p in started if modes[p[0].aid] != "fast"] if len(together) > 1 else started
    if len(together) > 1:
        alone += adapt_together(together)
    for job, support in alone:
        adapt_started(job, support, mode=modes[job.aid])  # resolved once, its trunk pass kept (resolved_mode)
    if batch[0].held:
        lifecycle.top_up()
    return f"batch of {len(batch)}"


def cpu_priority(behind: bool) -> int:
    """The CPU priority of a job (or batch) whose tenants have more waiting, or not: background
    (`background_nice`) or normal. -> the nice value, which its thread takes (`on_own_thread`);
    set now as this session's weight too, where the worker has a session of its own."""
    nice = get_settings().background_nice if behind else 0
    priority.set_session(nice)
    return nice


def adapt_together(pairs: list[tuple[Job, dict]]) -> list[tuple[Job, dict]]:
    """Adapt started jobs as one batch and end each. -> the jobs to run alone instead (all of them,
    when the batch raised: a bad support set or a bug then fails only its own job)."""
    lifecycle = jobs()

    def on_step(k: int, losses: list[float]) -> None:
        for (job, _), loss in zip(pairs, losses):
            lifecycle.step(job, k, loss)  # a job cancelled meanwhile ends with the batch; its end drops its weights

    nice = cpu_priority(all(lifecycle.background(j) for j, _ in pairs))
    slices = Slices(pairs[0][0], nice, tenants=tuple({j.tenant for j, _ in pairs}))
    try:
        with contextlib.ExitStack() as beats:
            for job, _ in pairs:
                beats.enter_context(lifecycle.beating(job))
            beats.enter_context(slices.watching())
            records, supports = [j.record for j, _ in pairs], [s for _, s in pairs]
            work = lambda pause: run_adaptations(registry(), records, supports, device(), on_step, pause)  # noqa: E731
            results = on_own_thread(nice, work, slices)
    except (redis.RedisError, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        log.warning("batch raised: its jobs run one at a time", extra={"error": f"{exc.__class__.__name__}: {exc}"})
        return pairs
    for (job, _), (fast, metrics) in zip(pairs, results):
        metrics["cpu_priority"] = "background" if nice else "normal"
        lifecycle.succeed(job, fast, metrics)
    return []


class Slices:
    """A running job's slices. While it runs, a thread (`watching`) looks twice a slice
    (`job_slice_seconds`) for waiting jobs of tenants other than those whose jobs this worker is
    running; when one waits (and, with other workers alive, is still waiting at the next look,
    so that an idle worker takes it first), the thread claims it and runs it to its end at once,
    at normal CPU priority, while the job it interrupts stops at its next pause (`adapt`'s
    `pause`: an embedding chunk, a step) until that job has ended. So a short job waits about half a slice
    plus one pause behind a long one, on a busy machine too (a long job at background priority
    would otherwise reach its pause slowly). A yielded-to job may yield in turn, up to MAX_DEPTH
    jobs deep; a job stops yielding once it has yielded half its soft time limit."""

    MAX_DEPTH = 3

    def __init__(self, job: Job, nice: int, outer: Slices | None = None, tenants: tuple[str, ...] = ()):
        self.job, self.nice, self.depth = job, nice, outer.depth + 1 if outer else 1
        self.tenants = (*(tenants or (job.tenant,)), *(outer.tenants if outer else ()))
        self.every = get_settings().job_slice_seconds
        self.free = threading.Event()  # set while no job this one yielded to is running
        self.free.set()
        self.yielded_s, self.yielded_to = 0.0, 0

    def __call__(self) -> None:
        """The job's pause: it waits while a job it yielded to runs."""
        self.free.wait()

    def spent(self) -> bool:
        """Too deep, or this job has yielded half its soft time limit: it no longer yields."""
        return self.depth >= self.MAX_DEPTH or self.yielded_s > get_settings().job_soft_time_limit / 2

    def yield_to(self, other: Job) -> None:
        """Run another tenant's job while this one waits at its next pause."""
        began = time.perf_counter()
        self.free.clear()
        try:
            run(other, self)
            if other.held:
                jobs().top_up()
        except Exception as exc:  # its beat stops: the reaper puts it back; this job goes on
            log.error("a job yielded to raised", exc_info=exc, extra={"adaptation_id": other.aid})
        finally:
            priority.set_session(self.nice)
            self.yielded_s += time.perf_counter() - began
            self.yielded_to += 1
            self.free.set()

    def watching(self) -> contextlib.AbstractContextManager:
        """The watcher, for as long as the job runs (its first look a whole slice in: a short job
        sends nothing). With other workers alive, a job is taken only if it is still waiting at
        the next look: none of them was free to take it."""
        if not self.every:
            return contextlib.nullcontext()
        seen = [0]  # looks in a row that found another tenant's job waiting

        def look():
            if self.spent():
                return
            with contextlib.suppress(redis.RedisError):
                seen[0] = seen[0] + 1 if jobs().scheduler.others_waiting(self.tenants) else 0
                if seen[0] > (jobs().workers_alive() > 1):
                    seen[0] = 0
                    if (other := jobs().claim(self.job.worker, exclude=self.tenants)) is not None:
                        self.yield_to(other)

        return alongside(self.every / 2, look, f"watch-{self.job.aid}", first=self.every)


def run(job: Job, outer: Slices | None = None) -> str:
    """Start the job, and run it inside its trace span (tracing.py) when there is one; `outer`:
    the slices of the job this one interrupts."""
    began = time.time_ns()
    support = jobs().start(job)
    if support is None:
        return "skipped"  # deleted, expired, cancelled while queued, or done by a twin run
    with tracing.job_span(job.record, began) as span:
        if span is not None:  # the start, done before the record (and its trace) was read
            tracing.tracer.start_span("store start", start_time=began).end()
        return adapt_started(job, support, outer)


def adapt_started(job: Job, support: dict, outer: Slices | None = None, mode: str | None = None) -> str:
    settings, lifecycle = get_settings(), jobs()

    def on_step(k: int, losses: list[float]) -> None:
        if not lifecycle.step(job, k, losses[0]):
            raise Stopped

    behind = lifecycle.background(job)
    job.held = job.held or behind  # a ticket taken while this job ran may have found its tenant at its limit
    nice = cpu_priority(behind)
    slices = Slices(job, nice, outer)
    try:
        with lifecycle.beating(job), slices.watching():
            work = lambda pause: run_adaptation(registry(), job.record, support, device(), on_step, pause, mode)  # noqa: E731
            fast, metrics = on_own_thread(nice, work, slices)
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
    metrics["cpu_priority"] = "background" if nice else "normal"
    if slices.yielded_to:  # its adaptation_ms is wall time: this much of it went to others' jobs
        metrics["yielded"] = {"jobs": slices.yielded_to, "ms": round(slices.yielded_s * 1000, 3)}
    return lifecycle.succeed(job, fast, metrics)
