"""The job lifecycle on a real Redis, in process: every row of its table walked, the upkeep
thread's start, stop and errors, and the app started and stopped twice in one process."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis
import torch

from app.core import keys
from app.core.adaptation import run_adaptation
from app.core.jobs import TRANSITIONS, Jobs, Tickets, heartbeats, make_celery
from app.core.jobs.lifecycle import FLUSH_SECONDS, Job
from app.core.jobs.states import CANCELLED, EXPIRED, FAILED, QUEUED, RUNNING, STATUSES, SUCCEEDED
from app.core.jobs.upkeep import Upkeep
from app.core.store import Store
from bench.stack import ROOT, wait_until
from models.registry import shipped


def lifecycle(settings) -> Jobs:
    return Jobs(Store(settings), Tickets(make_celery(settings)), settings)


def submit(jobs: Jobs, tenant: str = "acme", ttl: int = 60, mode: str = "fast") -> str:
    """A 5-point sinusoid adaptation, as the API creates it."""
    now = time.time()
    record = {
        "id": f"ad_{uuid.uuid4().hex}",
        "tenant": tenant,
        "model": "sinusoid-mlp",
        "model_version": shipped().load("sinusoid-mlp")[1]["version"],
        "task": "regression",
        "status": QUEUED,
        "mode": mode,
        "steps": None,
        "ttl_seconds": ttl,
        "created_ts": now,
        "classes": None,
        "target_shape": [1],
        "n_support": 5,
    }
    x = torch.linspace(-4, 4, 5).unsqueeze(1)
    aid, created = jobs.submit(record, {"x": x, "y": torch.sin(x)}, ttl)
    assert created
    return aid


def started(jobs: Jobs, worker: str = "w1", **kw):
    aid = submit(jobs, **kw)
    job = jobs.claim(worker)
    assert job.aid == aid and jobs.start(job) is not None
    return job


def status(jobs: Jobs, aid: str, tenant: str = "acme") -> str | None:
    return jobs.store.status(tenant, aid)


def events(jobs: Jobs, aid: str) -> list[str]:
    return [e["type"] for e in jobs.store.events("acme", aid, 0, 100)[0]]


def in_flight(jobs: Jobs, aid: str) -> bool:
    return jobs.store.r.hexists(keys.flights("acme"), aid)


# ---- one driver per row of the table: (source, target, by) -> it walks that move -----------
DRIVERS = {}


def walks(source: str, target: str, by: str):
    def register(f):
        DRIVERS[(source, target, by)] = f
        return f

    return register


@walks(QUEUED, RUNNING, "worker")
def _claim_and_start(jobs, settings):
    aid = submit(jobs)
    assert status(jobs, aid) == QUEUED and jobs.scheduler.waiting("acme") == 1
    job = jobs.claim("w1")
    assert jobs.start(job) is not None
    record = jobs.store.get("acme", aid)
    assert record["status"] == RUNNING and record["attempts"] == 1 and in_flight(jobs, aid)
    assert events(jobs, aid) == ["queued", "started"]
    assert jobs.step(job, 0, 0.5) and events(jobs, aid) == ["queued", "started"]  # steps go every FLUSH_SECONDS
    time.sleep(FLUSH_SECONDS)
    assert jobs.step(job, 1, 0.4) and events(jobs, aid) == ["queued", "started", "step", "step"]


@walks(RUNNING, SUCCEEDED, "worker")
def _succeed(jobs, settings):
    job = started(jobs)
    fast, metrics = run_adaptation(shipped(), job.record, jobs.store.support("acme", job.aid))
    assert jobs.succeed(job, fast, metrics) == SUCCEEDED
    assert status(jobs, job.aid) == SUCCEEDED and jobs.store.weights(job.aid) is not None
    assert not in_flight(jobs, job.aid) and jobs.scheduler.jobs("acme") == 0
    assert events(jobs, job.aid)[-1] == "succeeded"


@walks(RUNNING, FAILED, "worker")
def _fail(jobs, settings):
    job = started(jobs)
    jobs.fail(job, "invalid_support", "a reason")
    record = jobs.store.get("acme", job.aid)
    assert record["status"] == FAILED and record["error"]["code"] == "invalid_support"
    assert not in_flight(jobs, job.aid)
    # and an unexpected error on the last allowed try
    last = lifecycle(make_settings_like(settings, job_max_attempts=1))
    job = started(last)
    assert last.crashed(job, RuntimeError("CUDA out of memory")) == FAILED
    record = last.store.get("acme", job.aid)
    assert record["error"]["code"] == "too_many_attempts" and "CUDA out of memory" in record["error"]["message"]


@walks(RUNNING, QUEUED, "worker")
def _crash_with_tries_left(jobs, settings):
    job = started(jobs)
    assert jobs.crashed(job, RuntimeError("a bug")) == QUEUED
    assert status(jobs, job.aid) == QUEUED and not in_flight(jobs, job.aid)
    assert events(jobs, job.aid)[-1] == "requeued"
    again = jobs.claim("w2")
    assert again.aid == job.aid and jobs.start(again) is not None  # at the front of its line
    assert jobs.store.get("acme", job.aid)["attempts"] == 2


@walks(RUNNING, QUEUED, "reaper")
def _reap(jobs, settings):
    heartbeats.beat(jobs.store.r, "alive")
    held = started(jobs, worker="alive", tenant="globex")
    job = started(jobs, worker="ghost")  # no heartbeat: a dead worker
    assert jobs.reap("reaper") == [job.aid]
    assert status(jobs, job.aid) == QUEUED and status(jobs, held.aid, "globex") == RUNNING
    assert jobs.scheduler.waiting("acme") == 1 and events(jobs, job.aid)[-1] == "requeued"


@walks(RUNNING, FAILED, "reaper")
def _reap_the_last_try(jobs, settings):
    last = lifecycle(make_settings_like(settings, job_max_attempts=1))
    job = started(last, worker="ghost")
    assert last.reap("reaper") == [job.aid]
    record = last.store.get("acme", job.aid)
    assert record["status"] == FAILED and record["error"]["code"] == "too_many_attempts"
    assert not in_flight(last, job.aid) and last.scheduler.waiting("acme") == 0


@walks(QUEUED, CANCELLED, "client")
def _cancel_queued(jobs, settings):
    aid = submit(jobs)
    assert jobs.cancel(jobs.store.get("acme", aid)) == QUEUED and status(jobs, aid) == CANCELLED
    assert jobs.claim("w1") is None and jobs.scheduler.jobs("acme") == 0  # out of line at once: it never runs
    assert status(jobs, aid) == CANCELLED and not in_flight(jobs, aid)


@walks(RUNNING, CANCELLED, "client")
def _cancel_running(jobs, settings):
    job = started(jobs)
    assert jobs.step(job, 0, 1.0)
    assert jobs.cancel(jobs.store.get("acme", job.aid)) == RUNNING
    time.sleep(FLUSH_SECONDS)
    assert not jobs.step(job, 1, 0.5)  # the worker stops at its next step that reaches Redis
    fast, metrics = run_adaptation(shipped(), job.record, jobs.store.support("acme", job.aid))
    assert jobs.succeed(job, fast, metrics) == "gone"  # a finish after the cancel changes nothing
    assert status(jobs, job.aid) == CANCELLED and jobs.store.weights(job.aid) is None


def _into(jobs: Jobs, target: str) -> str:
    """An adaptation moved to `target`."""
    if target == QUEUED:
        return submit(jobs)
    job = started(jobs)
    if target == SUCCEEDED:
        jobs.succeed(job, *run_adaptation(shipped(), job.record, jobs.store.support("acme", job.aid)))
    elif target == FAILED:
        jobs.fail(job, "invalid_support", "a reason")
    elif target == CANCELLED:
        jobs.cancel(jobs.store.get("acme", job.aid))
    return job.aid


for _source in STATUSES:

    @walks(_source, EXPIRED, "redis")
    def _expire(jobs, settings, source=_source):
        aid = _into(jobs, source)
        assert status(jobs, aid) == source
        ttl_passes(jobs, aid)
        wait_until(lambda: status(jobs, aid) is None, 10, f"the {source} adaptation's TTL")
        assert jobs.store.support("acme", aid) is None and jobs.store.weights(aid) is None
        jobs.store.r.delete(keys.SWEEPER)
        jobs.sweep("sweeper")  # the sweeper drops its id from the tenant's indexes
        assert jobs.store.r.zcard(keys.tenant_index("acme")) == 0
        if (job := jobs.claim("w1")) is not None:  # a job that expired in line leaves it when a worker reaches it
            assert job.aid == aid and jobs.start(job) is None
        if source == RUNNING:  # its worker's end finds the record gone, and takes the job out of flight
            assert jobs.fail(Job(aid, "acme", "w0"), "invalid_support", "a reason") == FAILED
        assert jobs.scheduler.jobs("acme") == 0


def ttl_passes(jobs: Jobs, aid: str) -> None:
    """Its TTL, as if the time had come: every key it wrote expires now (Redis drops them itself)."""
    r = jobs.store.r
    jobs.store.cache.pexpire(keys.weights(aid), 1)
    r.pexpire(keys.record("acme", aid), 1)  # its support set and events are in it
    r.zadd(keys.expiries("acme"), {aid: time.time()})


def make_settings_like(settings, **overrides):
    return settings.model_copy(update=overrides)


def test_every_transition_of_the_table_has_a_walk():
    rows = {(t.source, t.target, t.by) for t in TRANSITIONS}
    assert rows == set(DRIVERS)
    assert {t.target for t in TRANSITIONS} | {t.source for t in TRANSITIONS} == set(STATUSES) | {EXPIRED}


@pytest.mark.parametrize("row", [(t.source, t.target, t.by) for t in TRANSITIONS], ids="-".join)
def test_a_job_moves_as_the_table_says(settings, row):
    DRIVERS[row](lifecycle(settings), settings)


def test_a_move_the_table_does_not_hold_is_refused(settings):
    jobs = lifecycle(settings)
    aid = submit(jobs)
    assert jobs.move("acme", aid, SUCCEEDED, "worker") == QUEUED  # queued -> succeeded: not a row
    assert status(jobs, aid) == QUEUED
    with pytest.raises(ValueError):
        jobs.move("acme", aid, QUEUED, "client")  # the client never puts a job back


def test_a_job_resumed_after_a_redis_error_runs_on_its_claim(settings):
    jobs = lifecycle(settings)
    job = started(jobs)
    job.resumed = True
    assert jobs.start(job) is not None and jobs.store.get("acme", job.aid)["attempts"] == 2


def test_the_claim_takes_tenants_in_turn_and_keeps_a_tenant_at_its_limit_while_another_is_active(settings):
    jobs = lifecycle(settings)
    acme = [submit(jobs, "acme") for _ in range(3)]
    globex = [submit(jobs, "globex") for _ in range(2)]
    order = [jobs.scheduler.claim("w", max_running=10) for _ in range(5)]
    assert [a for a, *_ in order] == [acme[0], globex[0], acme[1], globex[1], acme[2]]
    jobs.store.r.flushdb()
    one = [submit(jobs, "acme") for _ in range(3)]
    claim = lambda **kw: jobs.scheduler.claim("w", max_running=1, **kw)  # noqa: E731
    assert claim()[0] == one[0] and claim()[0] == one[1]  # alone, a tenant has no limit
    assert claim(active_seconds=0) == ("", "", True, False, "")  # a hard reservation holds even then
    jobs.store.r.flushdb()
    other = submit(jobs, "globex")
    assert claim()[0] == other  # globex is active now
    one = [submit(jobs, "acme") for _ in range(2)]
    assert claim()[0] == one[0]
    assert claim() == ("", "", True, False, "")  # acme runs its one: the next waits for a free worker
    assert jobs.scheduler.waiting("acme") == 1
    assert claim(active_seconds=1e-9)[0] == one[1]  # globex no longer counts as active


def test_a_yielding_jobs_claim_passes_over_its_own_tenant(settings):
    """A job yielding between slices (worker/tasks.py) claims other tenants' work only."""
    jobs = lifecycle(settings)
    acme = [submit(jobs, "acme") for _ in range(2)]
    assert jobs.claim("w", exclude=("acme",)) is None and jobs.scheduler.waiting("acme") == 2
    globex = submit(jobs, "globex")
    assert jobs.claim("w", exclude=("acme",)).aid == globex
    assert jobs.claim("w").aid == acme[0]  # and acme's line is as it was


def test_a_batch_claims_jobs_of_its_key_in_turns_of_the_rotation(settings):
    """Tenants' next jobs of the same batch key, taken in turns; a job of another key keeps its
    tenant's line where it is, and a tenant's last waiting job is left to be claimed alone."""
    jobs, claim = lifecycle(settings), lambda: jobs.scheduler.claim("w", max_running=10)
    acme = [submit(jobs, "acme") for _ in range(4)]
    globex = [submit(jobs, "globex") for _ in range(2)]
    initech = [submit(jobs, "initech", mode="fine-tune")]  # never batched
    aid, _, _, more, batch = claim()
    assert aid == acme[0] and more and batch
    got = jobs.scheduler.claim_batch("w", batch, 5)
    assert [m[0] for m in got] == [globex[0], acme[1], acme[2]]
    assert [claim()[0] for _ in range(4)] == [globex[1], initech[0], acme[3], ""]
    assert jobs.store.r.llen(keys.pending("acme")) == 0


def test_tickets_are_topped_up_to_the_backlog(settings):
    jobs = lifecycle(settings)
    broker = redis.Redis.from_url(settings.broker_url)
    for _ in range(3):
        submit(jobs)
    assert jobs.tickets.waiting() == 3
    broker.flushdb()  # the broker restarted empty: the tickets are lost
    assert jobs.tickets.waiting() == 0
    assert jobs.top_up() == 3 and jobs.tickets.waiting() == 3
    assert jobs.top_up() == 0  # never more than one per job in line


def test_upkeep_beats_until_stopped_and_counts_what_fails(settings, caplog):
    jobs = lifecycle(settings)
    upkeep = Upkeep(jobs, "w-upkeep", "lock-w-upkeep")
    upkeep.start()
    assert heartbeats.alive(jobs.store.r, settings.heartbeat_window) == ["w-upkeep"]
    dead = started(jobs, worker="ghost")
    wait_until(lambda: status(jobs, dead.aid) == QUEUED, 10, "the reaper's turn")  # the thread reaps
    upkeep.stop()
    assert heartbeats.alive(jobs.store.r, settings.heartbeat_window) == []  # gone at once on stop
    assert not upkeep._thread.is_alive()

    def broken(_name):
        raise redis.ConnectionError("the store is away")

    jobs.reap = broken
    with caplog.at_level(logging.WARNING, logger="rapid_adapt.upkeep"):
        upkeep.turn()
        upkeep.turn()
        jobs.reap = lambda _name: []
        upkeep.turn()
    assert upkeep.errors == {"reaper": 2}
    logged = [r.getMessage() for r in caplog.records if r.name == "rapid_adapt.upkeep"]
    assert logged == ["upkeep task failed", "upkeep task recovered"]  # once per streak, not per turn
    assert int(jobs.store.r.hget(keys.STATS, "upkeep_errors:reaper")) == 2  # on /metrics too


def test_the_operations_docs_draw_the_same_table():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### The job lifecycle") :].split("\n## ")[0]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("from", "---"):
            sources = cells[0].removeprefix("any (").rstrip(")").split(", ")
            rows |= {(s, cells[1], cells[2]) for s in sources}
    assert rows == {(t.source, t.target, t.by) for t in TRANSITIONS}


def test_only_the_worker_whose_turn_it_is_to_reap_tops_up_tickets(settings):
    jobs = lifecycle(settings)
    upkeep, topped = Upkeep(jobs, "w-upkeep", "lock-w-upkeep"), []
    jobs.top_up = lambda: topped.append(1) or 0
    jobs.reap = lambda _name: None  # another worker holds the reaper's turn
    upkeep.turn()
    assert topped == []
    jobs.reap = lambda _name: []  # this one's turn
    upkeep.turn()
    assert topped == [1] and upkeep.errors == {}


def test_a_claim_finds_a_tenant_that_joined_the_rotation_after_it_was_last_read(settings):
    """The scheduler keeps the rotation it read last: a new tenant behind one at its limit is
    still found (the script reads one tenant past those it was given)."""
    jobs = lifecycle(settings)
    acme = [submit(jobs, "acme") for _ in range(2)]
    hard = {"max_running": 1, "active_seconds": 0}  # acme at its limit even before globex is active
    assert jobs.scheduler.claim("w", **hard)[0] == acme[0]  # reads the rotation: [acme]
    globex = submit(jobs, "globex")
    assert jobs.scheduler.claim("w", **hard)[:3] == (globex, "globex", True)


def test_jobs_riding_in_a_batch_use_no_worker_of_their_own(settings):
    """While globex is active, acme may use all workers but one (here, one of two). Its jobs riding
    in globex's batch on w1 use no worker of acme's: acme still takes a job for w2, then is held."""
    jobs = lifecycle(settings)
    globex = [submit(jobs, "globex") for _ in range(3)]
    acme = [submit(jobs, "acme") for _ in range(4)]
    aid, _, _, _, batch = jobs.scheduler.claim("w1", max_running=1)
    assert aid == globex[0] and {t for _, t, _ in jobs.scheduler.claim_batch("w1", batch, 3)} == {"acme", "globex"}
    jobs.scheduler.beat(acme[0], "w1", "acme", rider=True)  # a beat keeps the rider a rider
    got = jobs.scheduler.claim("w2", max_running=1)
    assert got[1] == "acme" and got[0] in acme
    assert jobs.scheduler.claim("w3", max_running=1)[:3] == ("", "", True)  # both tenants on a worker each: held
