"""The per-tenant admission of request bodies (app/api/fairness.py), driven as plain ASGI:
shares come back however a request ends, and a waiter past its time gets a 429."""

import asyncio
import json

from app.api.fairness import TenantGate


def scope(length: int) -> dict:
    return {"type": "http", "method": "POST", "headers": [(b"content-length", str(length).encode())]}


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


def test_a_tenants_line_admits_in_turn_and_forgets_those_who_leave():
    async def run():
        hold, sent = asyncio.Event(), []

        async def inner(scope, receive, send):
            await hold.wait()

        async def send(message):
            sent.append(message)

        gate = TenantGate(inner, None, budget=100, body_limit=1000, timeout=0.3)
        first = asyncio.create_task(gate(scope(80), no_body, send))
        await asyncio.sleep(0.01)
        share = gate.shares["public"]
        assert share.used == 80
        gone = asyncio.create_task(gate(scope(50), no_body, send))  # 80 + 50 > 100: waits
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while waiting
        await asyncio.gather(gone, return_exceptions=True)
        assert not share.line and share.used == 80
        await gate(scope(5000), no_body, send)  # waits 0.3 s, then refused
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])
        assert start["status"] == 429 and (b"retry-after", b"1") in start["headers"]
        assert body["error"]["details"] == ["tenant_inflight_bytes", 100]
        assert not share.line and share.used == 80
        hold.set()
        await first
        assert share.used == 0
        await gate(scope(5000), no_body, send)  # alone, a body over the share goes in
        assert share.used == 0

    asyncio.run(run())


def test_refusals_are_answered_from_the_headers_before_the_body_is_parsed(redis_server):
    """A tenant at its quota of jobs, or over its prediction images this second, is refused without
    its body being parsed (a body that is not JSON gets the 429, not a 422), answered as the second
    turns, also with an Idempotency-Key never stored; a retry whose key is stored, another tenant, a freed
    place and the next second are not."""
    import time

    import redis

    from app.api.factory import create_app
    from app.demo import sinusoid_task
    from bench.stack import METRICS_KEY

    from .conftest import InProcess, make_settings, metric_values, run_next_job

    redis.Redis(port=redis_server.redis_port).flushall()
    settings = make_settings(redis_server, tenant_max_jobs=2, tenant_predict_images_per_second=5)
    body, garbage = {"model": "sinusoid-mlp", "support": sinusoid_task(0)[0]}, b'{"support": [oops'
    as_json = {"Content-Type": "application/json"}
    error = lambda r: (r.status_code, r.json()["error"]["code"], r.json()["error"]["details"][:1])  # noqa: E731
    with InProcess(create_app(settings)) as app:

        def refusals(route: str) -> float:  # 429s counted under the route's name, early or not
            text = app.request("GET", "/metrics", None, headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
            name = f'rapid_adapt_http_requests_total{{method="POST",route="{route}",status="429"}}'
            return metric_values(text).get(name, 0)

        before = refusals("/v1/adaptations")
        k0 = {"Idempotency-Key": "k0"}
        ids = [app.request("POST", "/v1/adaptations", json=body, headers=h).json()["id"] for h in (k0, {})]
        assert error(app.request("POST", "/v1/adaptations", json=body)) == (429, "quota_exceeded", ["tenant_max_jobs"])
        refused = app.request("POST", "/v1/adaptations", content=garbage, headers=as_json)
        assert error(refused) == (429, "quota_exceeded", ["tenant_max_jobs"])  # from its headers
        keyed = app.request("POST", "/v1/adaptations", content=garbage, headers=as_json | {"Idempotency-Key": "k1"})
        assert error(keyed) == (429, "quota_exceeded", ["tenant_max_jobs"])  # a key never stored: from its headers
        assert refusals("/v1/adaptations") == before + 3
        retry = app.request("POST", "/v1/adaptations", content=garbage, headers=as_json | k0)
        assert retry.status_code == 422  # a stored key: a retry may find its adaptation, so its body is read
        retry = app.request("POST", "/v1/adaptations", json=body, headers=k0)
        assert retry.status_code == 202 and retry.json()["id"] == ids[0]  # found, while the tenant is over its quota
        assert app.request("POST", "/v1/adaptations", "globex", content=garbage, headers=as_json).status_code == 422
        assert run_next_job(settings) == "succeeded"  # a place frees: the next create is read again, and queued
        assert app.request("POST", "/v1/adaptations", json=body).status_code == 202

        predict, before = f"/v1/adaptations/{ids[0]}/predictions", refusals("/v1/adaptations/{aid}/predictions")
        time.sleep(1.02 - time.time() % 1)  # the start of a second: the requests below fall in it
        over = app.request("POST", predict, json={"inputs": [[0.0]] * 6})  # 6 images, 5 a second
        assert error(over) == (429, "rate_limited", ["tenant_predict_images_per_second"])
        asked = time.time()
        refused = app.request("POST", predict, content=garbage, headers=as_json)
        assert error(refused) == (429, "rate_limited", ["tenant_predict_images_per_second"])
        assert refused.headers["retry-after"] == "1" and int(time.time()) > int(asked)  # answered as the second turned
        assert refusals("/v1/adaptations/{aid}/predictions") == before + 2
        time.sleep(1.02 - time.time() % 1)  # a new second's window
        assert app.request("POST", predict, json={"inputs": [[0.0]]}).status_code == 200
