"""The jobs API against a real stack: keyset pagination, cancel, metadata, events."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from app.core import keys
from app.demo import sinusoid_task
from bench.stack import KEYS, wait_until
from rapid_adapt_client import Client, RapidAdaptError

from .workers import slow_worker


def sin_support(seed: int = 0):
    return sinusoid_task(seed)[0]


def error_of(call) -> RapidAdaptError:
    with pytest.raises(RapidAdaptError) as e:
        call()
    return e.value


def test_paging_is_stable_under_inserts_and_deletes(new_stack):
    """The bug of v1's offset cursor: after page 1, two new adaptations pushed page 2 back
    onto page 1's ids. Keyset cursors see every id once, none twice, whatever happens
    between pages."""
    s = new_stack().start()
    with Client(s.url, KEYS["globex"]) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(), ttl_seconds=600)["id"] for _ in range(10)]
        first = c.adaptations(limit=4)
        assert [a["id"] for a in first["data"]] == ids[::-1][:4] and first["has_more"]
        new = [c.create_adaptation("sinusoid-mlp", sin_support())["id"] for _ in range(2)]  # inserts before page 2
        c.delete(ids[4])  # and a delete of an item on page 2
        second = c.adaptations(limit=4, after=first["next_cursor"])
        assert second["has_more"]
        c.delete(ids[0])  # a delete on page 3, and an insert, before it is read
        new.append(c.create_adaptation("sinusoid-mlp", sin_support())["id"])
        third = c.adaptations(limit=4, after=second["next_cursor"])
        assert not third["has_more"] and third["next_cursor"] is None
        seen = [a["id"] for page in (first, second, third) for a in page["data"]]
        assert len(seen) == len(set(seen)) == 8 and not set(new) & set(seen)
        assert seen == [i for i in ids[::-1] if i not in (ids[4], ids[0])]
        # the iterator walks the same way, new ones first
        everything = new[::-1] + seen
        assert [a["id"] for a in c.iter_adaptations(limit=3)] == everything
        # v1's numeric cursor still works as an offset
        legacy = httpx.get(
            s.url + "/v1/adaptations?limit=2&cursor=2", headers={"Authorization": f"Bearer {KEYS['globex']}"}
        )
        assert [a["id"] for a in legacy.json()["data"]] == everything[2:4]


def test_listing_is_exact_under_expiry_and_keeps_no_dead_ids(new_stack):
    s = new_stack().start()
    with Client(s.url, KEYS["globex"]) as c:
        live, dying = [], []
        for i in range(12):  # interleaved: every other one expires in a second
            a = c.create_adaptation("sinusoid-mlp", sin_support(), ttl_seconds=1 if i % 2 else 600)
            (dying if i % 2 else live).append(a["id"])
        time.sleep(2.2)
        pages, after = [], None
        while True:
            page = c.adaptations(limit=2, after=after)
            pages.append(page)
            assert len(page["data"]) == 2 or not page["has_more"]  # no short page with a cursor
            if not page["has_more"]:
                break
            after = page["next_cursor"]
        assert [a["id"] for p in pages for a in p["data"]] == live[::-1]
    r = redis.Redis(port=s.redis_port, db=1)
    assert {m.decode() for m in r.zrange(keys.tenant_index("globex"), 0, -1)} == set(live)
    assert {m.decode() for m in r.zrange(keys.expiries("globex"), 0, -1)} == set(live)


def test_expired_ids_leave_redis_without_anyone_listing(new_stack):
    """The workers' sweep: after the TTLs, nothing of the adaptations is left in Redis."""
    s = new_stack(sweep_seconds=1.0).start()
    r = redis.Redis(port=s.redis_port, db=1)
    with Client(s.url, KEYS["globex"]) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(), ttl_seconds=1, wait=10)["id"] for _ in range(3)]
    assert r.exists(keys.tenant_index("globex"), keys.expiries("globex"), keys.usage("globex")) == 3
    wait_until(lambda: not r.keys("ra:{globex}:*"), 10, "the sweep")  # indexes, records, support sets, events
    assert not any(r.exists(keys.record("globex", aid)) for aid in ids)


def test_metadata_is_returned_everywhere_and_filters_the_list(stack):
    with Client(stack.url, KEYS["acme"]) as c:
        tag = f"run-{time.monotonic_ns()}"
        a = c.create_adaptation("sinusoid-mlp", sin_support(), metadata={"run": tag, "team": "vision"}, wait=30)
        b = c.create_adaptation("sinusoid-mlp", sin_support(), metadata={"run": tag, "team": "audio"})
        assert a["metadata"] == {"run": tag, "team": "vision"}
        assert c.adaptation(a["id"])["metadata"]["team"] == "vision"
        assert [x["id"] for x in c.adaptations(metadata={"run": tag})["data"]] == [b["id"], a["id"]]
        assert [x["id"] for x in c.adaptations(metadata={"run": tag, "team": "vision"})["data"]] == [a["id"]]
        too_many = {f"k{i}": "v" for i in range(17)}
        e = error_of(lambda: c.create_adaptation("sinusoid-mlp", sin_support(), metadata=too_many))
        assert (e.status, e.code, e.details[:1]) == (422, "invalid_request", ["metadata"])
        e = error_of(lambda: c.create_adaptation("sinusoid-mlp", sin_support(), metadata={"k": "v" * 513}))
        assert e.details[:2] == ["metadata", "k"]


def test_events_and_loss_curve_show_the_progress(stack):
    with Client(stack.url, KEYS["acme"]) as c:
        a = c.create_adaptation("sinusoid-mlp", sin_support(), wait=30)
        events = list(c.iter_events(a["id"]))
        types = [e["type"] for e in events]
        steps = a["metrics"]["steps"]
        assert types == ["queued", "started"] + ["step"] * steps + ["succeeded"]
        assert [e["data"]["step"] for e in events if e["type"] == "step"] == list(range(1, steps + 1))
        curve = a["metrics"]["loss_curve"]
        assert len(curve) == steps + 1 and curve[-1] < curve[0]
        assert [e["data"]["loss"] for e in events if e["type"] == "step"] == pytest.approx(curve[:-1], rel=1e-4)
        page = c.events(a["id"], limit=3)
        rest = c.events(a["id"], after=page["next_cursor"])
        assert [e["id"] for e in page["data"] + rest["data"]] == [e["id"] for e in events]
        e = error_of(lambda: c.events(a["id"], after="ev_x"))
        assert (e.status, e.code, e.details) == (422, "invalid_cursor", ["query", "after"])


def test_cancel_queued_and_running_jobs_under_a_real_worker(new_stack):
    """20 queued and 5 running jobs cancelled: none succeeds, all end cancelled, and the
    worker takes the next job at once."""
    s = new_stack()
    s.start_redis()
    slow_worker(s, 2.5)  # the last job cancelled holds the worker for about 2.4 s: the 20 below stay queued
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"]) as c:
        running = []
        for _ in range(5):  # one at a time: each caught while running, then cancelled
            a = c.create_adaptation("sinusoid-mlp", sin_support())
            wait_until(lambda a=a: c.adaptation(a["id"])["status"] == "running", 30, "the job to run")
            assert c.cancel(a["id"])["status"] == "cancelled"
            running.append(a["id"])
        queued = [c.create_adaptation("sinusoid-mlp", sin_support())["id"] for _ in range(20)]
        for aid in queued:
            assert c.cancel(aid)["status"] == "cancelled"
            assert c.cancel(aid)["status"] == "cancelled"  # idempotent
        after = c.create_adaptation("sinusoid-mlp", sin_support())
        done = c.wait(after["id"], timeout=60)
        assert done["status"] == "succeeded", s.logs()
        assert done["attempts"] == 1  # the 20 cancelled jobs before it were skipped, not run (below)
        for aid in running + queued:
            a = c.adaptation(aid)
            assert a["status"] == "cancelled" and a["metrics"] is None, a
            types = [e["type"] for e in c.iter_events(aid)]
            assert types[-1] == "cancelled" and types.count("step") <= 1  # a running job stops at its next step
            assert "started" not in types or aid in running  # a queued one never runs
            e = error_of(lambda aid=aid: c.predict(aid, [[0.0]]))
            assert (e.status, e.code) == (409, "adaptation_cancelled")
        e = error_of(lambda: c.cancel(after["id"]))
        assert (e.status, e.code) == (409, "adaptation_finished")
        assert s.workers[0].poll() is None  # the worker lives on


def test_a_job_that_always_raises_fails_after_its_tries_and_the_worker_goes_on(new_stack):
    s = new_stack(job_max_attempts=3)
    s.start_redis()
    s.start_worker("tests.faults:app", test_job_raise="CUDA out of memory (injected)")
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"]) as c:
        a = c.create_adaptation("sinusoid-mlp", sin_support())
        done = c.wait(a["id"], timeout=60)
        assert done["status"] == "failed" and done["attempts"] == 3, s.logs()
        assert done["error"]["code"] == "too_many_attempts" and "CUDA out of memory" in done["error"]["message"]
        kinds = [e["type"] for e in c.iter_events(a["id"])]
        assert kinds == ["queued"] + ["started", "requeued"] * 2 + ["started", "failed"]
    assert s.workers[0].poll() is None  # the worker lives on
    assert "job raised" in (s.tmp / "worker0.log").read_text()  # with its traceback
