"""Webhooks: a receiver on 127.0.0.1 gets one call per ended job, signed as Standard Webhooks
signs; failures are tried again with backoff, then given up; the job never waits for them;
the URLs the service will not call are refused at create, naming the field."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
import redis

from app.api.schemas import public
from app.core import keys
from app.core.webhooks import Deliverer
from app.demo import sinusoid_task
from bench.stack import KEYS, Receiver, wait_until

from .conftest import make_settings, run_next_job

SECRET = base64.b64encode(b"a-secret-of-thirty-two-bytes-!!!").decode()
SECRETS = f"acme:whsec_{SECRET}"


@pytest.fixture
def receiver():
    made = []

    def make(*answers, delay=0.0):
        made.append(Receiver(answers, delay, "/hooks/rapid-adapt"))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def settings(redis_server):
    redis.Redis(port=redis_server.redis_port).flushall()
    return make_settings(redis_server, webhook_secrets=SECRETS, webhook_allow_private=True, webhook_backoff_seconds=0.3)


def verified(headers: dict, body: bytes) -> bool:
    """What a receiver does (Standard Webhooks): HMAC-SHA256 of id.timestamp.body with the secret."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    mac = base64.b64encode(hmac.new(base64.b64decode(SECRET), signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{mac}", s) for s in headers["webhook-signature"].split())


def created(api, url: str) -> str:
    support, _, _ = sinusoid_task(3)
    made = api.request(
        "POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support, "webhook_url": url}
    )
    assert made.status_code == 202, made.text
    assert made.json()["webhook_url"] == url and made.json()["webhook"] is None
    return made.json()["id"]


def test_a_receiver_gets_one_signed_call_when_the_job_ends(api, settings, receiver):
    hooks = receiver()
    aid = created(api, hooks.url)
    deliverer = Deliverer(api.app.state.store, settings, public)
    assert deliverer.turn() == 0 and hooks.calls == []  # nothing is due before the job ends
    assert run_next_job(settings) == "succeeded"
    assert hooks.calls == []  # the job ended without calling anyone: the deliverer calls
    assert deliverer.turn() == 1 and deliverer.turn() == 0  # once
    ((headers, body),) = hooks.calls
    assert verified(headers, body) and headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5 and headers["webhook-id"] == f"{aid}.succeeded"
    sent = json.loads(body)
    got = api.request("GET", f"/v1/adaptations/{aid}").json()
    assert sent["type"] == "adaptation.succeeded" and sent["data"] == got | {"webhook": None}
    assert got["webhook"]["status"] == "delivered" and got["webhook"]["attempts"] == 1
    tampered = body.replace(b"succeeded", b"failed")
    assert not verified(headers, tampered)
    # a cancel tells too; an adaptation without a webhook adds nothing due
    other = created(api, hooks.url)
    assert api.request("POST", f"/v1/adaptations/{other}/cancel").status_code == 200
    support, _, _ = sinusoid_task(4)
    api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support})
    assert deliverer.turn() == 1 and json.loads(hooks.calls[1][1])["type"] == "adaptation.cancelled"
    assert run_next_job(settings) == "succeeded" and deliverer.turn() == 0
    deliverer.stop()


def test_a_failing_receiver_is_tried_again_with_backoff_then_given_up(api, settings, receiver):
    flaky = receiver(500, 503)
    aid = created(api, flaky.url)
    deliverer = Deliverer(api.app.state.store, settings, public)
    run_next_job(settings)
    assert deliverer.turn() == 1
    state = api.request("GET", f"/v1/adaptations/{aid}").json()["webhook"]
    assert state["status"] == "retrying" and state["last_error"] == "the receiver answered 500"
    assert deliverer.turn() == 0  # not before its backoff (0.3 s, then 0.6 s)
    wait_until(lambda: deliverer.turn(), 3, "the second attempt")
    wait_until(lambda: deliverer.turn(), 3, "the third attempt")
    state = api.request("GET", f"/v1/adaptations/{aid}").json()["webhook"]
    assert state["status"] == "delivered" and state["attempts"] == 3 and len(flaky.calls) == 3
    assert len({h["webhook-id"] for h, _ in flaky.calls}) == 1  # one id: a receiver drops repeats
    assert redis.Redis.from_url(settings.redis_url).zcard(keys.webhooks("acme")) == 0

    down = receiver(*[500] * 10)
    limited = settings.model_copy(update={"webhook_max_attempts": 2, "webhook_backoff_seconds": 0.05})
    deliverer = Deliverer(api.app.state.store, limited, public)
    aid = created(api, down.url)
    run_next_job(settings)
    deliverer.turn()
    wait_until(lambda: deliverer.turn(), 3, "the last attempt")
    state = api.request("GET", f"/v1/adaptations/{aid}").json()["webhook"]
    assert state["status"] == "failed" and state["attempts"] == 2
    time.sleep(0.2)
    assert deliverer.turn() == 0 and len(down.calls) == 2  # given up


def test_a_deleted_adaptations_webhook_is_dropped_and_a_slow_receiver_fails_its_attempt(api, settings, receiver):
    hooks = receiver()
    aid = created(api, hooks.url)
    run_next_job(settings)
    assert api.request("DELETE", f"/v1/adaptations/{aid}").status_code == 204
    deliverer = Deliverer(api.app.state.store, settings, public)
    assert deliverer.turn() == 0 and hooks.calls == []
    slow = receiver(delay=1.0)
    aid = created(api, slow.url)
    run_next_job(settings)
    hasty = Deliverer(api.app.state.store, settings.model_copy(update={"webhook_timeout_seconds": 0.2}), public)
    assert hasty.turn() == 1
    state = api.request("GET", f"/v1/adaptations/{aid}").json()["webhook"]
    assert state["status"] == "retrying" and state["last_error"].startswith("ReadTimeout")


def test_urls_the_service_will_not_call_and_tenants_without_a_secret_are_refused_naming_the_field(
    redis_server, receiver
):
    from app.api.factory import create_app

    from .conftest import InProcess

    redis.Redis(port=redis_server.redis_port).flushall()
    strict = make_settings(redis_server, webhook_secrets=SECRETS)
    support, _, _ = sinusoid_task(3)
    with InProcess(create_app(strict)) as api:
        for url, says in [
            ("http://127.0.0.1:9/x", "not a public address"),
            ("http://10.1.2.3/x", "not a public address"),
            ("http://[::1]/x", "not a public address"),
            ("http://169.254.169.254/latest/meta-data", "not a public address"),
            ("http://localhost:8000/", "own machine"),
            ("ftp://example.com/x", "https://"),
            ("https://user:pw@example.com/x", "user or password"),
            ("https:///x", "no host"),
        ]:
            r = api.request(
                "POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": support, "webhook_url": url}
            )
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_webhook_url", (url, r.text)
            assert says in r.json()["error"]["message"] and r.json()["error"]["details"] == ["webhook_url"]
        r = api.request(
            "POST",
            "/v1/adaptations",
            key="globex",
            json={"model": "sinusoid-mlp", "support": support, "webhook_url": "https://example.com/h"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_not_configured"
        assert "RAPID_ADAPT_WEBHOOK_SECRETS" in r.json()["error"]["message"]
        assert api.request("GET", "/v1/adaptations", key="globex").json()["data"] == []  # nothing stored
        ok = {"model": "sinusoid-mlp", "support": support, "webhook_url": "https://hooks.example.com/rapid"}
        assert api.request("POST", "/v1/adaptations", json=ok).status_code == 202


def test_a_worker_calls_the_webhook_of_a_job_it_ran(new_stack, receiver):
    """The deliverer runs in a real worker's main process: a job's end reaches the receiver."""
    hooks = receiver()
    s = new_stack(webhook_secrets=SECRETS, webhook_allow_private="true")
    s.start()
    support, _, _ = sinusoid_task(5)
    headers = {"Authorization": f"Bearer {KEYS['acme']}"}
    body = {"model": "sinusoid-mlp", "support": support, "webhook_url": hooks.url}
    made = httpx.post(f"{s.url}/v1/adaptations?wait=20", json=body, headers=headers, timeout=30).json()
    assert made["status"] == "succeeded"
    wait_until(lambda: hooks.calls, 10, "the webhook")
    ((h, sent),) = hooks.calls
    assert verified(h, sent) and json.loads(sent)["data"]["id"] == made["id"]
    state = wait_until(
        lambda: httpx.get(f"{s.url}/v1/adaptations/{made['id']}", headers=headers).json()["webhook"], 5, "state"
    )
    assert state["status"] == "delivered"
