"""The client package against real stacks: retries, the async client, and errors."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from app.demo import sinusoid_task
from bench.stack import KEYS, METRICS_KEY
from rapid_adapt_client import AsyncClient, Client, RapidAdaptError

from .conftest import metric_values


def test_a_create_retried_while_redis_is_down_makes_one_adaptation(new_stack):
    s = new_stack().start()
    with Client(s.url, KEYS["acme"], timeout=10) as c:
        s.stop_redis()
        order = []
        restart = threading.Timer(3.0, lambda: (s.start_redis(), order.append("redis back")))
        restart.start()
        a = c.create_adaptation("sinusoid-mlp", sinusoid_task(1)[0])  # retried with one Idempotency-Key
        order.append("created")
        restart.join()
        assert order == ["redis back", "created"]  # it kept retrying through the outage
        assert a["status"] in ("queued", "running", "succeeded")
        assert c.wait(a["id"], timeout=60)["status"] == "succeeded", s.logs()
        assert [x["id"] for x in c.iter_adaptations()] == [a["id"]]


def test_the_async_client_waits_pages_and_names_the_field(stack):
    async def go():
        async with AsyncClient(stack.url, KEYS["acme"]) as c:
            assert {m["name"] for m in await c.models()} >= {"omniglot-conv4", "sinusoid-mlp"}
            a = await c.create_adaptation("sinusoid-mlp", sinusoid_task(2)[0], metadata={"suite": "async"})
            done = await c.wait(a["id"], timeout=60)
            listed = [x["id"] async for x in c.iter_adaptations(limit=1, metadata={"suite": "async"})]
            with pytest.raises(RapidAdaptError) as e:
                await c.create_adaptation("sinusoid-mlp", [{"input": [1.0, 2.0], "target": 0.0}])
            return done, listed, a, e.value

    done, listed, a, err = asyncio.run(go())
    assert done["status"] == "succeeded" and a["id"] in listed
    assert (err.status, err.code, err.field) == (422, "invalid_shape", "support[0].input")


def test_errors_are_not_retried_and_an_unreachable_service_is_status_0(stack):
    def answered_404() -> float:
        text = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
        line = 'rapid_adapt_http_requests_total{method="GET",route="/v1/adaptations/{aid}",status="404"}'
        return metric_values(text).get(line, 0.0)

    before = answered_404()
    with Client(stack.url, KEYS["acme"]) as c:
        with pytest.raises(RapidAdaptError) as e:
            c.adaptation("ad_" + "0" * 32)
        assert e.value.status == 404
    assert answered_404() == before + 1  # asked once: a 404 is not retried
    with Client("http://127.0.0.1:1", "k", max_retries=1) as c, pytest.raises(RapidAdaptError) as e:
        c.models()
    assert (e.value.status, e.value.code) == (0, "unreachable")


def test_a_stream_of_events_shows_each_step_as_it_happens_and_ends_with_succeeded(stack):
    """Client.stream_events: one request (server-sent events), each event as the job makes it,
    the last one succeeded; no listing call on the way."""
    import time

    with Client(stack.url, KEYS["acme"]) as c:
        made = c.create_adaptation("sinusoid-mlp", sinusoid_task(13)[0], mode="fine-tune")
        seen, listed = [], []
        c.events = lambda *a, **k: listed.append(a)  # a listing (polling) would show here
        for e in c.stream_events(made["id"]):
            seen.append((e["type"], time.monotonic()))
        kinds = [k for k, _ in seen]
        assert kinds[0] == "queued" and kinds[-1] == "succeeded" and kinds.count("step") >= 1 and not listed
        assert c.adaptation(made["id"])["status"] == "succeeded"
