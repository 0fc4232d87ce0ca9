"""The API in this process on a real Redis (httpx's ASGI transport): its lifespan starts and
stops what it holds, and a job runs through the worker's own task code in process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
import redis
import torch

from app.api.factory import create_app
from app.core import keys
from app.demo import sinusoid_task

from .conftest import KEYS, InProcess, metric_values, run_next_job


def lane_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("predictor")]


def test_the_app_starts_and_stops_twice_in_one_process(settings):
    before = lane_threads()
    app = create_app(settings)
    for _ in range(2):
        with InProcess(app) as api:
            assert sorted(set(lane_threads()) - set(before)) == ["predictor", "predictor-bulk"]
            assert api.request("GET", "/v1/models").json()["data"][0]["name"]
            assert api.request("GET", "/healthz").status_code == 200
        assert lane_threads() == before  # the lanes stopped with the app
        assert not hasattr(app.state, "predictor") and not hasattr(app.state, "registry")


def test_a_round_trip_in_process(api, settings):
    support, queries, truth = sinusoid_task(3)
    created = api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support})
    assert created.status_code == 202, created.text
    aid = created.json()["id"]
    early = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": queries[:2]})
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready"
    assert run_next_job(settings) == "succeeded"
    got = api.request("GET", f"/v1/adaptations/{aid}").json()
    assert got["status"] == "succeeded" and got["metrics"]["steps"] > 0
    answer = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": queries})
    values = [p["value"] for p in answer.json()["predictions"]]
    mse = sum((v - t) ** 2 for v, t in zip(values, truth)) / len(truth)
    assert mse < 0.5  # adapted to this curve (MAML's bar after one step is 0.67)
    assert api.request("GET", f"/v1/adaptations/{aid}", key="globex").status_code == 404
    assert api.request("DELETE", f"/v1/adaptations/{aid}").status_code == 204
    assert api.request("GET", f"/v1/adaptations/{aid}").status_code == 404


def test_evicted_weights_are_rebuilt_off_the_lanes(api, settings):
    support, queries, _ = sinusoid_task(4)
    aid = api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support}).json()["id"]
    run_next_job(settings)
    first = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": queries[:5]}).json()
    store = api.app.state.store
    store.drop_weights(aid)  # evicted from Redis
    api.app.state.predictor.lru.drop(aid)  # and from this process
    again = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": queries[:5]}).json()
    values = lambda answer: [p["value"] for p in answer["predictions"]]  # noqa: E731
    assert values(again) == pytest.approx(values(first), abs=1e-5)  # rebuilt from the stored support set
    assert store.weights(aid) is not None


def test_the_interactive_lane_goes_wide_only_while_the_cores_are_free(api, settings):
    """The lane asks before each pass how many cores other processes left free: with a core
    to spare its pass takes the wide count of threads (counted on /metrics by threads), else
    one; the answers are the same."""
    from bench.stack import METRICS_KEY

    from .test_idle import Free

    support, queries, _ = sinusoid_task(6)
    aid = api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support}).json()["id"]
    assert run_next_job(settings) == "succeeded"
    lane = api.app.state.predictor.interactive_threads
    scrape = lambda: metric_values(  # noqa: E731
        api.request("GET", "/metrics", None, headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    )
    passes = lambda n: scrape().get(f'rapid_adapt_predict_passes_total{{threads="{n}"}}', 0.0)  # noqa: E731
    answers = {}
    for cores, threads in ((2.0, lane.wide), (0.2, 1)):
        lane.free = Free(cores)
        before = passes(threads)
        answer = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": queries[:5]})
        assert answer.status_code == 200
        answers[cores] = [p["value"] for p in answer.json()["predictions"]]
        assert passes(threads) == before + 1
    assert answers[2.0] == pytest.approx(answers[0.2], abs=1e-5)


def test_a_rebuild_holds_back_only_the_requests_that_need_it(api, settings, monkeypatch):
    """acme's weights evicted and their rebuild made slow: globex's prediction, sent after acme's,
    is answered while acme's still waits for its rebuild; then acme's is answered too."""
    from app.api import predictor as predictor_module

    real = predictor_module.run_adaptation
    monkeypatch.setattr(predictor_module, "run_adaptation", lambda *a: time.sleep(2.0) or real(*a))
    support, queries, _ = sinusoid_task(4)
    ids = {}
    for tenant in ("acme", "globex"):
        body = {"model": "sinusoid-mlp", "support": support}
        ids[tenant] = api.request("POST", "/v1/adaptations", key=tenant, json=body).json()["id"]
        assert run_next_job(settings) == "succeeded"
    api.app.state.store.drop_weights(ids["acme"])
    api.app.state.predictor.lru.drop(ids["acme"])
    auth = lambda key: {"Authorization": f"Bearer {KEYS[key]}"}  # noqa: E731

    async def both():
        predict = (
            lambda t: api.client.post(  # noqa: E731
                f"/v1/adaptations/{ids[t]}/predictions", json={"inputs": queries[:3]}, headers=auth(t)
            )
        )
        owner = asyncio.ensure_future(predict("acme"))
        await asyncio.sleep(0.3)  # acme's rebuild under way
        other = await predict("globex")
        return other, owner.done(), await owner

    other, owner_done_first, owner = api._run(both())
    assert other.status_code == 200 and not owner_done_first
    values = lambda answer: [p["value"] for p in answer.json()["predictions"]]  # noqa: E731
    assert owner.status_code == 200 and values(owner) == pytest.approx(values(other), abs=1e-5)  # rebuilt alike


def test_metrics_count_the_backlog_and_the_workers_upkeep_errors(api, settings):
    from app.core.jobs import Jobs, Tickets, heartbeats, make_celery
    from bench.stack import METRICS_KEY

    def scrape() -> dict[str, float]:
        return metric_values(
            api.request("GET", "/metrics", None, headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
        )

    support = sinusoid_task(5)[0]
    for _ in range(3):
        api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support})
    values = scrape()
    assert (values["rapid_adapt_queue_depth"], values["rapid_adapt_jobs_running"]) == (3, 0)  # no worker here
    for w in ("w1", "w2", "w3"):
        heartbeats.beat(api.app.state.store.r, w)  # three workers alive: a tenant may run two jobs at once
    Jobs(api.app.state.store, Tickets(make_celery(settings)), settings).claim("w1")  # a worker holds one
    values = scrape()
    assert (values["rapid_adapt_queue_depth"], values["rapid_adapt_jobs_running"]) == (2, 1)
    run_next_job(settings)  # another runs the next to its end
    values = scrape()
    assert (values["rapid_adapt_queue_depth"], values["rapid_adapt_jobs_running"]) == (1, 1)
    assert values['rapid_adapt_adaptations_finished_total{status="succeeded"}'] == 1
    api.app.state.store.r.hincrby("ra:stats", "upkeep_errors:reaper", 2)  # as a worker's upkeep reports them
    assert scrape()['rapid_adapt_upkeep_errors_total{task="reaper"}'] == 2


def test_the_stored_count_is_kept_on_write_through_deletes_and_expiry(api, settings):
    from app.core.jobs import Jobs, Tickets, make_celery
    from bench.stack import wait_until

    store = api.app.state.store
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(6)[0]}
    ids = [api.request("POST", "/v1/adaptations", json=body).json()["id"] for _ in range(3)]
    short = api.request("POST", "/v1/adaptations", json=body | {"ttl_seconds": 1}).json()["id"]
    assert store.count_adaptations(["acme", "globex"]) == 4
    assert api.request("DELETE", f"/v1/adaptations/{ids[0]}").status_code == 204
    assert api.request("DELETE", f"/v1/adaptations/{ids[0]}").status_code == 404  # counted out once
    assert store.count_adaptations(["acme", "globex"]) == 3
    wait_until(lambda: store.get("acme", short) is None, 10, "the short TTL")
    Jobs(store, Tickets(make_celery(settings)), settings).sweep("sweeper")
    assert store.count_adaptations(["acme", "globex"]) == 2
    store.prune("acme")  # a second prune finds nothing more to count out
    assert store.count_adaptations(["acme", "globex"]) == 2 == store.r.zcard(keys.tenant_index("acme"))


def test_the_duration_histogram_costs_one_bucket_a_job_and_reads_cumulative(api):
    from app.core import stats
    from bench.stack import METRICS_KEY

    r = api.app.state.store.r
    for seconds in (0.003, 0.03, 0.7, 45.0):
        stats.record_outcome(r, "succeeded", seconds)
    assert sum(1 for k in r.hkeys("ra:stats") if k.startswith(b"b:")) == 4  # 45 s: past the last, in +Inf
    assert len(r.hkeys("ra:stats")) == 5  # the buckets and the sum: the status is the buckets' sum
    values = metric_values(
        api.request("GET", "/metrics", None, headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    )
    bucket = lambda le: values[f'rapid_adapt_adaptation_duration_seconds_bucket{{le="{le}"}}']  # noqa: E731
    assert [bucket(le) for le in ("0.01", "0.025", "0.05", "1.0", "30.0", "+Inf")] == [1, 1, 2, 3, 3, 4]


def test_metrics_count_jobs_per_tenant_and_base_their_waits_quota_refusals_and_the_stores_memory(redis_server):
    """The operator's figures (issue 32): jobs by tenant, base and status, the wait in line and
    the whole life as histograms, 429s by tenant and limit, the store's memory against its cap.
    With METRICS_TENANT_LABEL off every tenant's series is one, tenant="all"."""
    from bench.stack import METRICS_KEY

    from .conftest import make_settings

    def scrape(api) -> dict[str, float]:
        auth = {"Authorization": f"Bearer {METRICS_KEY}"}
        return metric_values(api.request("GET", "/metrics", None, headers=auth).text)

    for by_tenant in (True, False):
        redis.Redis(port=redis_server.redis_port).flushall()
        settings = make_settings(redis_server, tenant_max_jobs=2, metrics_tenant_label=by_tenant)
        with InProcess(create_app(settings)) as api:
            body = {"model": "sinusoid-mlp", "support": sinusoid_task(5)[0]}
            made = [api.request("POST", "/v1/adaptations", json=body).json()["id"] for _ in range(2)]
            acme = "acme" if by_tenant else "all"
            refusals = f'rapid_adapt_quota_refusals_total{{limit="tenant_max_jobs",tenant="{acme}"}}'
            refused_before = scrape(api).get(refusals, 0)  # the counter is the process's: other tests' count too
            assert api.request("POST", "/v1/adaptations", json=body).status_code == 429  # tenant_max_jobs
            other = api.request("POST", "/v1/adaptations", key="globex", json=body).json()["id"]
            assert run_next_job(settings) == "succeeded"
            assert run_next_job(settings) == "succeeded"  # globex's: the rotation takes turns
            assert api.request("POST", f"/v1/adaptations/{made[1]}/cancel").status_code == 200
            assert api.request("GET", f"/v1/adaptations/{other}", key="globex").json()["status"] == "succeeded"
            time.sleep(1.2)  # the workers' counts reach Redis within a second
            values = scrape(api)
            job = 'rapid_adapt_jobs_finished_total{{model="sinusoid-mlp",status="{}",tenant="{}"}}'
            assert values[job.format("cancelled", acme)] == 1
            if by_tenant:
                assert values[job.format("succeeded", "acme")] == values[job.format("succeeded", "globex")] == 1
            else:
                assert values[job.format("succeeded", "all")] == 2
            for kind in ("queued", "run", "end_to_end"):  # by base
                assert values[f'rapid_adapt_job_{kind}_seconds_bucket{{le="+Inf",model="sinusoid-mlp"}}'] == 2
            queued, run, total = (
                values[f'rapid_adapt_job_{kind}_seconds_sum{{model="sinusoid-mlp"}}']
                for kind in ("queued", "run", "end_to_end")
            )
            assert 0 < queued < total and 0 < run < total
            assert values[refusals] == refused_before + 1
            assert values['rapid_adapt_store_memory_bytes{node="0"}'] > 100_000
            assert values['rapid_adapt_store_memory_limit_bytes{node="0"}'] == 0  # the test's Redis has none
            assert values['rapid_adapt_predictor_waiting{lane="interactive"}'] == 0


def test_a_wait_is_told_of_its_job_s_end_and_reads_the_record_about_once_a_second(api, settings):
    """?wait= costs a read a second plus one when the end is published (app/api/notices.py),
    not a poll every few milliseconds; with the notices away it still ends, by its reads."""
    r = api.app.state.store.r
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(5)[0]}
    for notices_on in (True, False):
        if not notices_on:
            api.app.state.notices.stop()
        timer = threading.Timer(1.5, run_next_job, (settings,))
        before = r.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
        heard = api.app.state.notices.received
        timer.start()
        got = api.request("POST", "/v1/adaptations?wait=10", json=body).json()
        timer.join()
        reads = r.info("commandstats")["cmdstat_hmget"]["calls"] - before
        assert got["status"] == "succeeded"
        assert api.app.state.notices.received - heard == int(notices_on)
        # the worker's two (workers alive, the record), the wait's at 1 s, then at the notice (or at 2 s)
        assert reads <= 4, reads
    api.app.state.notices.start()


def test_a_wait_answers_from_the_record_the_notice_carries_without_reading_it(api, settings):
    """A worker whose job succeeded publishes the record with its end: the waiting request answers
    from it. Its only reads are the once-a-second ones before the end (a notice without the record
    costs one more read after it)."""
    store = api.app.state.store
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(5)[0]}
    api.request("POST", "/v1/adaptations", json=body)
    run_next_job(settings)  # warm: the next job runs at once
    real, reads = store.get, []
    store.get = lambda *a: reads.append(a) or real(*a)
    try:
        timer = threading.Timer(0.2, run_next_job, (settings,))
        started = time.monotonic()
        timer.start()
        got = api.request("POST", "/v1/adaptations?wait=10", json=body).json()
        elapsed = time.monotonic() - started
        timer.join()
    finally:
        store.get = real
    assert got["status"] == "succeeded" and got == api.request("GET", f"/v1/adaptations/{got['id']}").json()
    assert len(reads) <= int(elapsed), (reads, elapsed)


def test_record_fields_are_all_read_back_and_an_unknown_one_is_refused(api, settings):
    """A read names the record's fields (its support set and events stay behind): every field a
    job's life writes must be among them, and the store refuses to write one that is not."""
    from app.core.store import EVENTS, RECORD_FIELDS, SUPPORT

    r, store = api.app.state.store.r, api.app.state.store
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(5)[0], "metadata": {"k": "v"}}
    ids = [
        api.request("POST", "/v1/adaptations", json=body, headers={"Idempotency-Key": f"f{i}"}).json()["id"]
        for i in range(2)
    ]
    run_next_job(settings)
    api.request("POST", f"/v1/adaptations/{ids[1]}/cancel")
    for aid in ids:
        written = {k.decode() for k in r.hkeys(keys.record("acme", aid))}
        assert written - {SUPPORT, EVENTS} <= set(RECORD_FIELDS) and {SUPPORT, EVENTS} <= written
        assert set(store.get("acme", aid)) == written - {SUPPORT, EVENTS}
    with pytest.raises(ValueError, match="RECORD_FIELDS"):
        store.update("acme", ids[0], colour="blue")


def test_lua_and_python_agree_on_what_redis_allocates(api):
    """The byte quota's model of Redis's memory is computed in Python (a create, the weights) and
    in Lua (a move's growth): both must give the same size for every length."""
    from app.core.store import _BYTES_FUNCTION, allocated

    r = api.app.state.store.r
    sizes = [*range(0, 300), 1000, 4095, 4096, 65529, 65530, 65536, 100_000, 1_048_576, 3_000_001]
    lua = r.eval(
        _BYTES_FUNCTION + "local out = {} for i, n in ipairs(ARGV) do out[i] = alloc(tonumber(n)) end return out",
        0,
        *sizes,
    )
    assert lua == [allocated(n) for n in sizes]
    assert allocated(5) == 8 and allocated(100) == 112 and allocated(200) == 224 and allocated(1000) == 1024


def test_waits_hold_no_thread_and_a_tenant_holds_at_most_max_waits_at_once(redis_server):
    """Requests waiting on a queued job hold no thread of the pool the other routes share
    (they await an asyncio event); one tenant's wait beyond max_waits_per_tenant is answered 429
    naming the limit, another tenant's still waits; the job's end answers them all."""
    import anyio.to_thread

    from .conftest import make_settings

    redis.Redis(port=redis_server.redis_port).flushall()
    settings = make_settings(redis_server, max_waits_per_tenant=3)
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(5)[0]}
    with InProcess(create_app(settings)) as app:
        aid = app.request("POST", "/v1/adaptations", json=body).json()["id"]
        theirs = app.request("POST", "/v1/adaptations", json=body, key="globex").json()["id"]
        auth = lambda key: {"Authorization": f"Bearer {KEYS[key]}"}  # noqa: E731

        async def until(check) -> None:  # polled for up to 10 s: a loaded machine is slow, a fixed sleep flaky
            for _ in range(500):
                if check():
                    return
                await asyncio.sleep(0.02)

        async def waits():
            threads = anyio.to_thread.current_default_thread_limiter()
            get = lambda a, key: app.client.get(f"/v1/adaptations/{a}?wait=20", headers=auth(key))  # noqa: E731
            held = [asyncio.ensure_future(get(aid, "acme")) for _ in range(3)]
            await until(lambda: app.app.state.notices.waiting("acme") == 3)
            await until(lambda: threads.borrowed_tokens == 0)  # each read its record; a wait holds none
            borrowed = threads.borrowed_tokens
            refused = await get(aid, "acme")
            other = asyncio.ensure_future(get(theirs, "globex"))
            await until(lambda: app.app.state.notices.waiting("globex") == 1)
            pending = sum(not t.done() for t in [*held, other])
            await asyncio.get_running_loop().run_in_executor(None, run_next_job, settings)
            await asyncio.get_running_loop().run_in_executor(None, run_next_job, settings)
            return borrowed, refused, pending, await asyncio.gather(*held, other)

        borrowed, refused, pending, answers = app._run(waits())
        assert borrowed == 0  # three requests waiting, no thread held
        assert refused.status_code == 429 and refused.json()["error"]["details"] == ["max_waits_per_tenant", 3]
        assert refused.headers["retry-after"] == "1"
        assert pending == 4  # the three of acme and globex's, all still waiting
        assert [a.json()["status"] for a in answers] == ["succeeded"] * 4
        assert app.app.state.notices.waiting("acme") == 0  # counted out as they ended


def test_a_tenant_s_byte_total_is_the_sum_of_its_adaptations_through_runs_deletes_and_expiry(api, settings):
    """The byte quota reads one kept total (O(1) per create): it must always equal the sum of the
    per-adaptation bytes it stands for."""
    from app.core.jobs import Jobs, Tickets, make_celery
    from bench.stack import wait_until

    store = api.app.state.store
    r = store.r

    def consistent() -> bool:
        usage = r.zrange(keys.usage("acme"), 0, -1, withscores=True)
        return int(r.get(keys.usage_total("acme")) or 0) == sum(b for _, b in usage)

    body = {"model": "sinusoid-mlp", "support": sinusoid_task(7)[0]}
    ids = [api.request("POST", "/v1/adaptations", json=body).json()["id"] for _ in range(3)]
    short = api.request("POST", "/v1/adaptations", json=body | {"ttl_seconds": 1}).json()["id"]
    for _ in range(4):
        run_next_job(settings)
    assert consistent() and int(r.zscore(keys.usage("acme"), ids[0])) > len(codecs_bytes(store, ids[0]))
    assert api.request("DELETE", f"/v1/adaptations/{ids[0]}").status_code == 204 and consistent()
    wait_until(lambda: store.get("acme", short) is None, 10, "the short TTL")
    Jobs(store, Tickets(make_celery(settings)), settings).sweep("sweeper")
    assert consistent() and r.zcard(keys.usage("acme")) == 2


def test_a_tenant_is_charged_what_its_adaptations_hold_in_redis(api, settings):
    """Every stored byte counts toward the byte quota: records (metadata in UTF-8 included),
    events, support sets, idempotency keys, weights and index entries (metadata indexes too). What the tenant is
    charged is compared with Redis's own MEMORY USAGE of everything its creates and jobs wrote."""
    r = api.app.state.store.r
    mem = lambda *names: sum(r.memory_usage(n, samples=0) or 0 for n in names)  # noqa: E731
    sets = [keys.tenant_index("acme"), keys.expiries("acme"), keys.usage("acme")]
    before = mem(*sets)
    ids = []
    for i in range(12):
        metadata = {f"note{j}": "\N{GRINNING FACE}" * 100 + str(i) for j in range(10)}  # 4 bytes a character
        headers = {"Idempotency-Key": f"k{i}"} if i % 2 else {}
        body = {"model": "sinusoid-mlp", "support": sinusoid_task(i)[0], "metadata": metadata}
        created = api.request("POST", "/v1/adaptations", json=body, headers=headers)
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    for _ in range(8):  # 8 succeed (events, metrics, weights), 4 stay queued
        assert run_next_job(settings) == "succeeded"
    written = mem(*sets) - before + mem(*r.keys("ra:{acme}:m:*"))  # the metadata indexes are new here
    for aid in ids:
        record = api.app.state.store.get("acme", aid)
        written += mem(keys.record("acme", aid))  # its support set and events are in it
        written += mem(keys.weights(aid), *([record["idempotency_key"]] if "idempotency_key" in record else []))
    charged = int(r.get(keys.usage_total("acme")))
    assert abs(charged - written) <= 0.03 * written, (charged, written)
    too_much = {f"n{j}": "\N{GRINNING FACE}" * 120 for j in range(10)}  # 4,820 bytes of UTF-8
    refused = api.request("POST", "/v1/adaptations", json=body | {"metadata": too_much})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "metadata_too_large"
    assert refused.json()["error"]["details"] == ["metadata"]


def codecs_bytes(store, aid: str) -> bytes:
    """The stored support set's bytes: the usage of a succeeded adaptation adds its weights to them."""
    return store.r.hget(keys.record("acme", aid), "_support")


def test_the_quota_of_jobs_counts_the_line_and_the_flights_and_a_refused_create_leaves_nothing(redis_server):
    """The scheduler's enqueue checks the quota of jobs (queued in line plus running in flight) at
    once with its write; a create it refuses is taken back whole (record, indexes, bytes); a
    cancel frees its place at once."""
    from .conftest import make_settings

    settings = make_settings(redis_server, tenant_max_jobs=2)
    redis.Redis(port=redis_server.redis_port).flushall()
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(8)[0]}
    with InProcess(create_app(settings)) as app:
        store, jobs = app.app.state.store, app.app.state.jobs
        ids = [app.request("POST", "/v1/adaptations", json=body).json()["id"] for _ in range(2)]
        assert jobs.claim("w1").aid == ids[0]  # one running, one queued: two jobs
        refused = app.request("POST", "/v1/adaptations", json=body, headers={"Idempotency-Key": "k"})
        assert refused.status_code == 429 and refused.json()["error"]["details"] == ["tenant_max_jobs", 2]
        r = store.r
        assert store.count_adaptations(["acme"]) == 2 and len(r.keys("ra:{acme}:a:*")) == 2
        assert not r.keys("ra:{acme}:idem:*")  # a retry may try again
        assert int(r.get(keys.usage_total("acme"))) == sum(
            b for _, b in r.zrange(keys.usage("acme"), 0, -1, withscores=True)
        )
        assert app.request("POST", f"/v1/adaptations/{ids[1]}/cancel").json()["status"] == "cancelled"
        assert jobs.scheduler.jobs("acme") == 1
        assert app.request("POST", "/v1/adaptations", json=body, headers={"Idempotency-Key": "k"}).status_code == 202


def test_a_create_over_a_quota_first_drops_the_tenant_s_expired_adaptations(redis_server):
    """The create script prunes only when a quota would refuse: expired adaptations free their
    place and their bytes, and a create that is still over is refused with nothing written."""
    from .conftest import make_settings

    settings = make_settings(redis_server, tenant_max_adaptations=2)
    redis.Redis(port=redis_server.redis_port).flushall()
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(8)[0]}
    with InProcess(create_app(settings)) as app:
        for _ in range(2):
            assert app.request("POST", "/v1/adaptations", json=body | {"ttl_seconds": 1}).status_code == 202
        r = app.app.state.store.r
        r.zadd(keys.expiries("acme"), dict.fromkeys(r.zrange(keys.expiries("acme"), 0, -1), 0))  # their time came
        assert app.request("POST", "/v1/adaptations", json=body).status_code == 202
        assert app.request("POST", "/v1/adaptations", json=body).status_code == 202
        refused = app.request("POST", "/v1/adaptations", json=body)
        assert refused.status_code == 429 and refused.json()["error"]["details"] == ["tenant_max_adaptations", 2]
        usage = r.zrange(keys.usage("acme"), 0, -1, withscores=True)
        assert r.zcard(keys.tenant_index("acme")) == 2 == len(usage)
        assert int(r.get(keys.usage_total("acme"))) == sum(b for _, b in usage)


def test_a_request_without_a_known_key_is_refused_from_its_headers_without_reading_the_body(api):
    """401 before a byte of the body is read (FastAPI would parse it all before the route's
    dependencies check the key): the app is called at the ASGI level with a body that would
    take forever to arrive."""
    sent, reads = [], []

    async def receive():
        reads.append(1)
        await asyncio.sleep(3600)  # a body that never comes

    async def send(message):
        sent.append(message)

    for authorization in (b"", b"Bearer not-a-key", b"Basic abc"):
        sent.clear()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"8000000")]
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/adaptations",
            "raw_path": b"/v1/adaptations",
            "query_string": b"",
            "headers": headers + ([(b"authorization", authorization)] if authorization else []),
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("127.0.0.1", 1),
            "root_path": "",
            "state": {},
        }
        api._run(asyncio.wait_for(api.app(scope, receive, send), 5))
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        assert start["status"] == 401 and body["error"]["details"] == ["headers", "authorization"]
        assert (b"connection", b"close") in start["headers"]
    assert reads == []
    assert api.request("GET", "/v1/adaptations").status_code == 200  # a known key goes on as before


def test_a_filter_walks_its_pair_s_index_and_reads_at_most_list_max_scan_records(redis_server):
    """One key=value filter walks that pair's index: the one match among 250 newer adaptations is
    read alone. With two pairs the first's index is walked and the second checked on each record:
    each page then reads at most LIST_MAX_SCAN records and hands a cursor on, and following the
    cursors finds the match. Unfiltered pages are unchanged."""
    from .conftest import make_settings

    redis.Redis(port=redis_server.redis_port).flushall()
    settings = make_settings(redis_server, list_max_scan=101)
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(9)[0]}
    with InProcess(create_app(settings)) as app:
        store = app.app.state.store
        template = store.get(
            "acme",
            app.request("POST", "/v1/adaptations", json=body | {"metadata": {"k": "x", "j": "y"}}).json()["id"],
        )
        for i in range(250):  # newer than the one match, written straight into the store
            record = template | {
                "id": f"ad_{i:032x}",
                "created_ts": template["created_ts"] + 1 + i,
                "metadata": {"k": "x"},
            }
            store.create(record, {"x": torch.zeros(1, 1), "y": torch.zeros(1, 1)}, 600)
        r = store.r

        def walk(params: dict) -> tuple[list[int], list[dict]]:
            reads, pages, after = [], [], None
            while True:
                before = r.info("commandstats")["cmdstat_hmget"]["calls"]
                page = app.request("GET", "/v1/adaptations", params=params | ({"after": after} if after else {}))
                reads.append(r.info("commandstats")["cmdstat_hmget"]["calls"] - before)
                pages.append(page.json())
                if not page.json()["has_more"]:
                    return reads, pages
                after = page.json()["next_cursor"]

        reads, pages = walk({"metadata[j]": "y"})
        assert reads == [1] and [a["id"] for a in pages[0]["data"]] == [template["id"]]
        reads, pages = walk({"metadata[k]": "x", "metadata[j]": "y"})
        assert max(reads) <= 101 and len(pages) == 3
        assert [a["id"] for p in pages for a in p["data"]] == [template["id"]]
        assert len(walk({"metadata[k]": "x", "limit": 100})[1]) == 3  # 251 by k=x, 100 a page
        listed = app.request("GET", "/v1/adaptations", params={"limit": 100}).json()
        assert len(listed["data"]) == 100 and listed["has_more"]
        store.delete(template)  # gone from its pairs' indexes too
        assert walk({"metadata[j]": "y"})[1][0]["data"] == [] and not r.exists(keys.metadata_index("acme", "j", "y"))


def test_a_body_of_more_arrays_than_any_request_holds_is_refused_before_it_is_parsed(api):
    """8 MB of nested empty lists took a second of the event loop to parse (json or orjson alike):
    it is refused from a count of its brackets; bad JSON is still invalid_json, and a create of
    numbers parses as before."""
    from app.api.bodies import MAX_CONTAINERS

    headers = {"Content-Type": "application/json"}
    nested = b'{"model":"sinusoid-mlp","support":[' + b"[[]]," * (MAX_CONTAINERS // 2) + b"[[]]]}"
    for path in ("/v1/adaptations", f"/v1/adaptations/ad_{'0' * 32}/predictions"):
        refused = api.request("POST", path, content=nested, headers=headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "too_many_values" and refused.json()["error"]["details"] == ["body"]
    broken = api.request("POST", "/v1/adaptations", content=b'{"model": "sinusoid-mlp", "support": [', headers=headers)
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_json"
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(2)[0]}
    assert api.request("POST", "/v1/adaptations", json=body).status_code == 202


def test_errors_a_new_user_meets_name_the_accepted_forms(api, settings):
    """A float label, a scalar input, a form-encoded body and a 409 say what is accepted; an image
    sent as a data URL (what a browser's canvas gives) is taken as its base64."""
    from app.demo import omniglot_task

    def error(body=None, **kw):
        r = api.request("POST", "/v1/adaptations", json=body, **kw)
        assert r.status_code == 422, r.text
        return r.json()["error"]

    points = sinusoid_task(1)[0]
    e = error({"model": "omniglot-conv4", "support": [{"input": [0.0], "label": 1.5}]})
    assert e["details"] == ["support", 0, "label"] and "a JSON string of 1-200 characters or an integer" in e["message"]
    e = error({"model": "sinusoid-mlp", "support": [{"input": 0.5, "target": 1.0}]})
    assert e["details"] == ["support", 0, "input"] and "nested numeric array" in e["message"]
    e = error(content=b"model=sinusoid-mlp", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "send the body as JSON (Content-Type: application/json)" in e["message"]
    aid = api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": points}).json()["id"]
    early = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": [[0.0]]}).json()["error"]
    assert early["code"] == "not_ready" and "?wait=SECONDS" in early["message"]
    assert run_next_job(settings) == "succeeded"
    support, queries, _ = omniglot_task(seed=2, n_way=5, n_query=1)
    answers = []
    for prefix in ("", "data:image/png;base64,"):
        sent = [{"input": {"image": prefix + e["input"]["image"]}, "label": e["label"]} for e in support]
        made = api.request("POST", "/v1/adaptations", json={"model": "omniglot-conv4", "support": sent, "mode": "fast"})
        assert made.status_code == 202, made.text
        assert run_next_job(settings) == "succeeded"
        inputs = [{"image": prefix + q["image"]} for q in queries]
        answers.append(
            api.request("POST", f"/v1/adaptations/{made.json()['id']}/predictions", json={"inputs": inputs}).json()
        )
    assert [p["label"] for p in answers[0]["predictions"]] == [p["label"] for p in answers[1]["predictions"]]


def test_the_page_and_the_docs_carry_a_content_security_policy_and_are_never_framed(api):
    for path in ("/", "/docs", "/redoc"):
        got = api.request("GET", path, key=None)
        csp = got.headers["content-security-policy"]
        assert got.status_code == 200 and "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert got.headers["x-content-type-options"] == "nosniff" and got.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in api.request("GET", "/", key=None).headers["content-security-policy"]


def test_the_page_is_told_whether_the_api_wants_a_key_and_the_quick_start_s_demo_key(redis_server):
    """The page asks for a key only where the API wants one (so a page without a key calls nothing
    that answers 401), and names the quick start's key only when that key is on."""
    from app.api.pages import page_html
    from app.core.config import DEMO_KEY

    from .conftest import make_settings

    meta = lambda html, name: html.split(f'<meta name="{name}" content="')[1].split('"')[0]  # noqa: E731
    on = page_html(make_settings(redis_server))
    assert meta(on, "rapid-adapt-auth") == "on" and meta(on, "rapid-adapt-demo-key") == ""
    demo = page_html(make_settings(redis_server, api_keys=f"demo:{DEMO_KEY}", allow_demo_key=True))
    assert meta(demo, "rapid-adapt-demo-key") == DEMO_KEY
    assert meta(page_html(make_settings(redis_server, auth="off")), "rapid-adapt-auth") == "off"


@pytest.mark.parametrize("kind", ["images", "sinusoid"])
def test_an_exported_adaptation_predicts_offline_as_the_service_does(api, settings, tmp_path, kind):
    """GET .../export: one safetensors file (the base included); the client's offline loader
    answers the same inputs with the same predictions as the service, and refuses what is not an
    export. An adaptation that has not succeeded does not export."""
    from rapid_adapt_client import offline

    if kind == "images":
        examples = json.loads((Path(__file__).parent.parent / "app/api/static/examples/omniglot-test.json").read_text())
        chars = next(iter(examples.values()))
        names = sorted(chars)[:5]
        body = {"model": "omniglot-conv4", "support": [{"input": {"image": chars[n][0]}, "label": n} for n in names]}
        inputs = [{"image": chars[n][1]} for n in names]
    else:
        support, queries, _ = sinusoid_task(11)
        body, inputs = {"model": "sinusoid-mlp", "support": support}, queries[:7]
    aid = api.request("POST", "/v1/adaptations", json=body).json()["id"]
    assert api.request("GET", f"/v1/adaptations/{aid}/export").json()["error"]["code"] == "not_ready"
    run_next_job(settings)
    served = api.request("POST", f"/v1/adaptations/{aid}/predictions", json={"inputs": inputs}).json()["predictions"]
    got = api.request("GET", f"/v1/adaptations/{aid}/export")
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    path = tmp_path / f"{aid}.safetensors"
    path.write_bytes(got.content)
    here = offline.load(path).predict(inputs)
    assert [p.get("label") for p in here] == [p.get("label") for p in served]
    flat = lambda ps: [
        v for p in ps for v in (p["scores"].values() if "scores" in p else torch.tensor(p["value"]).flatten().tolist())
    ]  # noqa: E731
    assert flat(here) == pytest.approx(flat(served), abs=1e-6)
    (tmp_path / "not.safetensors").write_bytes(b"junk")
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error, whatever its class)
        offline.load(tmp_path / "not.safetensors")


def parse_sse(text: str) -> list[dict]:
    """Server-sent events -> [{id, event, data}], comments left out."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            out.append(fields | {"data": json.loads(fields.get("data", "{}"))})
    return out


def test_the_events_stream_as_server_sent_events_until_the_job_ends_and_resume_from_last_event_id(api, settings):
    """Accept: text/event-stream on the events: one request sees every event as it comes, the last
    one `succeeded`, and ends; Last-Event-ID resumes after it; a deleted adaptation's stream says
    so and ends."""
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(12)[0], "mode": "fine-tune"}
    aid = api.request("POST", "/v1/adaptations", json=body).json()["id"]
    sse = {"Accept": "text/event-stream"}
    timer = threading.Timer(0.5, run_next_job, (settings,))
    timer.start()
    got = api.request("GET", f"/v1/adaptations/{aid}/events", headers=sse)  # one request, held until the end
    timer.join()
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(got.text)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "succeeded" and "step" in kinds
    assert [e["id"] for e in events] == [f"ev_{i}" for i in range(len(events))]
    assert events[-1]["data"]["type"] == "succeeded"
    listed = api.request("GET", f"/v1/adaptations/{aid}/events", params={"limit": 100}).json()["data"]
    assert [e["data"] for e in events] == listed  # the same events as the JSON listing
    resumed = parse_sse(
        api.request("GET", f"/v1/adaptations/{aid}/events", headers=sse | {"Last-Event-ID": "ev_1"}).text
    )
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]
    other = api.request("POST", "/v1/adaptations", json=body).json()["id"]
    threading.Timer(0.5, api.app.state.jobs.delete, (api.app.state.store.get("acme", other),)).start()
    gone = parse_sse(api.request("GET", f"/v1/adaptations/{other}/events", headers=sse).text)
    assert [e["event"] for e in gone] == ["queued", "gone"]
    bad = api.request("GET", f"/v1/adaptations/{aid}/events", headers=sse | {"Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"


def test_images_as_multipart_files_adapt_and_predict_as_the_same_images_in_json(api, settings):
    """multipart/form-data: files named support[LABEL] and inputs, text fields for the rest. The
    same images give the same adaptation and predictions as in JSON, with the same errors naming
    the field."""
    import base64

    examples = json.loads((Path(__file__).parent.parent / "app/api/static/examples/omniglot-test.json").read_text())
    chars = next(iter(examples.values()))
    names = sorted(chars)[:4]
    pngs = {n: [base64.b64decode(chars[n][0]), base64.b64decode(chars[n][1])] for n in names}
    as_json = {
        "model": "omniglot-conv4",
        "mode": "fast",
        "metadata": {"via": "json"},
        "support": [{"input": {"image": chars[n][0]}, "label": n} for n in names],
    }
    files = [(f"support[{n}]", (f"{n}.png", pngs[n][0], "image/png")) for n in names]
    form = {"model": "omniglot-conv4", "mode": "fast", "metadata": '{"via": "form"}'}
    a = api.request("POST", "/v1/adaptations", json=as_json).json()
    made = api.request("POST", "/v1/adaptations", data=form, files=files)
    assert made.status_code == 202, made.text
    b = made.json()
    assert b["classes"] == a["classes"] == names and b["metadata"] == {"via": "form"}
    run_next_job(settings)
    run_next_job(settings)
    queries = [("inputs", (f"q{i}.png", pngs[n][1], "image/png")) for i, n in enumerate(names)]
    by_json = api.request(
        "POST", f"/v1/adaptations/{a['id']}/predictions", json={"inputs": [{"image": chars[n][1]} for n in names]}
    ).json()
    by_form = api.request("POST", f"/v1/adaptations/{b['id']}/predictions", files=queries)
    assert by_form.status_code == 200, by_form.text
    assert by_form.json() == by_json
    bad = api.request(
        "POST", "/v1/adaptations", data=form, files=[("support[x]", ("x.png", b"not a png", "image/png"))]
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][:2] == ["support", 0]
    stray = api.request(
        "POST", "/v1/adaptations", data=form, files=[("photo", ("x.png", pngs[names[0]][0], "image/png"))]
    )
    assert stray.status_code == 422 and stray.json()["error"]["details"] == ["photo"]


def test_a_workers_finished_jobs_reach_redis_within_a_second_without_another_job(settings):
    """A pool process tallies its jobs' ends; the ones after the first write of a second go
    out by a timer, since no later job nor upkeep turn may come to that process."""
    from app.core import stats

    r = redis.Redis.from_url(settings.redis_url)
    tally = stats.Tally(r)
    tally.add("succeeded", 0.02)
    assert stats.finished(stats.read(r), "succeeded") == 1  # the first at once
    tally.add("succeeded", 0.03)
    tally.add("failed", 0.5)
    assert stats.finished(stats.read(r), "succeeded") == 1  # held for the rest of the second
    deadline = time.monotonic() + 3
    while stats.finished(stats.read(r), "failed") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = stats.read(r)
    assert stats.finished(counts, "succeeded") == 2 and stats.finished(counts, "failed") == 1
    assert counts["duration_sum"] == pytest.approx(0.55)
