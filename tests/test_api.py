"""The service against real Redis, Celery worker and uvicorn processes."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import time

import httpx
import pytest
import redis
import torch
from PIL import Image

from app.demo import omniglot_task, sinusoid_task
from bench.stack import KEYS, METRICS_KEY, wait_until
from models import registry
from models.adapt import adapt, predict
from models.research import evaluate, omniglot
from rapid_adapt_client import AsyncClient, Client, RapidAdaptError

from .conftest import metric_values
from .workers import slow_worker


@pytest.fixture
def acme(stack):
    with Client(stack.url, api_key=KEYS["acme"]) as c:
        yield c


@pytest.fixture
def globex(stack):
    with Client(stack.url, api_key=KEYS["globex"]) as c:
        yield c


def arrays(n_classes: int, per_class: int = 1, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(n_classes)
    return [
        {"input": torch.rand(shape, generator=g).tolist(), "label": f"c{k}"}
        for k in range(n_classes)
        for _ in range(per_class)
    ]


def sin_support():
    return sinusoid_task(0)[0]


def error_of(call) -> RapidAdaptError:
    with pytest.raises(RapidAdaptError) as e:
        call()
    return e.value


# ---- end to end -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "fine-tune"])
def test_omniglot_pngs_round_trip_matches_the_evaluation_path(acme, mode):
    support, queries, truth = omniglot_task(seed=3)
    a = acme.create_adaptation("omniglot-conv4", support, mode=mode, wait=30)
    assert a["status"] == "succeeded", a
    m = a["metrics"]
    assert len(a["classes"]) == 20 and m["mode"] == mode and a["mode"] == mode
    assert m["support_loss_after"] <= m["support_loss_before"] and len(m["loss_curve"]) == m["steps"] + 1
    preds = acme.predict(a["id"], queries)
    http_acc = sum(p["label"] == y for p, y in zip(preds, truth)) / len(truth)
    # the evaluation command's code path on the same drawings
    ds = omniglot.load()
    sids, qids = omniglot.EpisodeSampler(ds, "test").sample_ids(20, 1, 5, torch.Generator().manual_seed(3))
    model, _ = registry.shipped().load("omniglot-conv4")
    fast = adapt(model, ds.images[[i for i, _, _ in sids]], torch.arange(20), mode=mode).fast
    out = predict(model, fast, ds.images[[i for i, _, _ in qids]])
    eval_acc = (out.argmax(-1) == torch.tensor([label for *_, label in qids])).float().mean().item()
    assert http_acc == pytest.approx(eval_acc)
    assert http_acc > 0.5  # chance is 5%; on the test alphabets the base is right about 9 times in 10
    p = preds[0]
    assert set(p["scores"]) == {str(c) for c in a["classes"]} and abs(sum(p["scores"].values()) - 1) < 1e-4


def test_sinusoid_arrays_round_trip_matches_the_evaluation_path(acme):
    support, queries, truth = sinusoid_task(seed=5)
    a = acme.create_adaptation("sinusoid-mlp", support, wait=30)
    assert a["status"] == "succeeded" and a["classes"] is None
    values = [p["value"] for p in acme.predict(a["id"], queries)]
    model, _ = registry.shipped().load("sinusoid-mlp")
    sx = torch.tensor([e["input"] for e in support])
    sy = torch.tensor([[e["target"]] for e in support])
    out = evaluate.base_curve(model, sx, sy, torch.tensor(queries), model.default_steps)[-1][:, 0]
    assert values == pytest.approx(out.tolist(), abs=1e-5)
    mse = sum((v - y) ** 2 for v, y in zip(values, truth)) / len(truth)
    assert mse < 1.0  # the zero function scores about 4 here


def test_labels_any_json_string_or_integer_and_unequal_shots(acme):
    ex = arrays(3, 2)
    ex[0]["label"] = 7
    ex[1]["label"] = 7
    ex[2]["label"] = "seven"
    ex[3]["label"] = "seven"
    ex[4]["label"] = "ω"
    ex = ex[:5]  # shots 2, 2, 1
    a = acme.create_adaptation("omniglot-conv4", ex, wait=30)
    assert a["status"] == "succeeded" and a["classes"] == [7, "seven", "ω"]
    for p in acme.predict(a["id"], [e["input"] for e in ex]):
        assert set(p["scores"]) == {"7", "seven", "ω"}
        best = max(p["scores"], key=p["scores"].get)
        assert p["label"] == {"7": 7}.get(best, best)  # the label comes back with its JSON type
    ambiguous = [dict(e) for e in ex]
    ambiguous[2]["label"] = ambiguous[3]["label"] = "7"
    e = error_of(lambda: acme.create_adaptation("omniglot-conv4", ambiguous))
    assert (e.status, e.code, e.details) == (422, "ambiguous_labels", ["support", 2, "label"])


def test_regression_values_shaped_like_targets(acme):
    support = [{"input": e["input"], "target": [e["target"]]} for e in sin_support()]
    a = acme.create_adaptation("sinusoid-mlp", support, wait=30)
    v = acme.predict(a["id"], [[0.0], [1.0]])
    assert isinstance(v[0]["value"], list) and len(v[0]["value"]) == 1


def test_async_client_round_trip(stack):
    import asyncio

    async def go():
        async with AsyncClient(stack.url, api_key=KEYS["acme"]) as c:
            assert {m["name"] for m in await c.models()} == {"omniglot-conv4", "sinusoid-mlp", "symbols-conv4"}
            a = await c.create_adaptation("sinusoid-mlp", sin_support(), wait=30)
            return await c.predict(a["id"], [[1.0]])

    assert len(asyncio.run(go())) == 1


def test_concurrent_predictions_on_two_adaptations_match_one_at_a_time(acme, stack):
    """Requests that arrive together share forward passes in the predictor thread,
    across adaptations; each still gets its own answer."""
    import asyncio

    tasks = [omniglot_task(seed=s, n_query=2) for s in (11, 12)]
    ids = [acme.create_adaptation("omniglot-conv4", support, wait=30)["id"] for support, _, _ in tasks]
    alone = [acme.predict(aid, queries) for aid, (_, queries, _) in zip(ids, tasks)]

    async def together():
        async with AsyncClient(stack.url, api_key=KEYS["acme"]) as c:
            return await asyncio.gather(*(c.predict(ids[k % 2], tasks[k % 2][1]) for k in range(12)))

    for k, preds in enumerate(asyncio.run(together())):
        expected = alone[k % 2]
        assert [p["label"] for p in preds] == [p["label"] for p in expected]
        for p, q in zip(preds, expected):
            assert p["scores"] == pytest.approx(q["scores"], abs=1e-5)


# ---- models, health, metrics, openapi ----------------------------------------


def test_models_describe_inputs_limits_and_metrics(acme):
    m = acme.model("omniglot-conv4")
    assert m["task"] == "classification" and m["input"]["kind"] == "image" and m["input"]["shape"] == [1, 28, 28]
    assert m["max_ways"] >= 20 and 0 < m["default_steps"] <= m["max_steps"] and m["algorithm"]
    assert m["metrics"]["results"]["20-way 1-shot"]["rows"]
    assert acme.model("sinusoid-mlp")["input"]["kind"] == "vector"
    e = error_of(lambda: acme.model("nope"))
    assert (e.status, e.code) == (404, "unknown_model")


def test_health_ready_metrics_openapi(stack):
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(stack.url + "/readyz").json()
    assert r["status"] == "ready" and r["workers"] >= 1
    with Client(stack.url, api_key=KEYS["acme"]) as c:
        c.create_adaptation("sinusoid-mlp", sin_support(), wait=30)
    assert httpx.get(stack.url + "/metrics").status_code == 401  # not open: behind its own key
    assert httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {KEYS['acme']}"}).status_code == 401
    text = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    values = metric_values(text)
    assert values['rapid_adapt_adaptations_finished_total{status="succeeded"}'] >= 1
    assert values["rapid_adapt_adaptation_duration_seconds_count"] >= 1
    assert values["rapid_adapt_adaptations_stored"] >= 1  # the backlog's count: tests/test_service.py
    assert values["rapid_adapt_workers_alive"] >= 1
    assert any(
        k.startswith("rapid_adapt_http_request_duration_seconds_bucket{") and 'route="/v1/adaptations"' in k
        for k in values
    )
    # structured logs: one JSON object per request, with its id
    r = httpx.get(stack.url + "/healthz", headers={"X-Request-ID": "req-123"})
    assert r.headers["x-request-id"] == "req-123"
    time.sleep(0.2)
    events = [json.loads(line) for line in (stack.tmp / "api.log").read_text().splitlines() if line.startswith("{")]
    assert any(e.get("request_id") == "req-123" and e["route"] == "/healthz" and e["status"] == 200 for e in events)
    worker_events = [
        json.loads(line) for line in (stack.tmp / "worker0.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(e["event"] == "adaptation succeeded" and e["adaptation_id"].startswith("ad_") for e in worker_events)
    doc = httpx.get(stack.url + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in (
        "AdaptationCreate",
        "Adaptation",
        "AdaptationList",
        "PredictionRequest",
        "PredictionResponse",
        "ModelInfo",
        "ErrorBody",
    ):
        assert name in schemas
    assert schemas["AdaptationCreate"].get("examples") and schemas["Adaptation"].get("examples")


# ---- errors ---------------------------------------------------------------


def raw(stack, method, path, key=KEYS["acme"], **kw):
    return httpx.request(
        method, stack.url + path, headers={"Authorization": f"Bearer {key}", **kw.pop("headers", {})}, timeout=30, **kw
    )


def png(w, h) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


ONE = torch.zeros(1, 28, 28).tolist()
CASES = [
    ("unknown model", {"model": "nope", "support": arrays(2)}, 404, "unknown_model", ["model"]),
    (
        "bad shape",
        {"model": "omniglot-conv4", "support": [{"input": [[1.0]], "label": "a"}] + arrays(2)},
        422,
        "invalid_shape",
        ["support", 0, "input"],
    ),
    (
        "label on regression",
        {"model": "sinusoid-mlp", "support": [{"input": [1.0], "label": "a"}]},
        422,
        "missing_target",
        ["support", 0, "target"],
    ),
    (
        "target on classification",
        {"model": "omniglot-conv4", "support": [{"input": ONE, "label": "a", "target": 1.0}] + arrays(2)},
        422,
        "unexpected_target",
        ["support", 0, "target"],
    ),
    (
        "float label",
        {"model": "omniglot-conv4", "support": [{"input": ONE, "label": 1.5}] + arrays(2)},
        422,
        "invalid_request",
        ["support", 0, "label"],
    ),
    (
        "one class",
        {"model": "omniglot-conv4", "support": [{"input": ONE, "label": "a"}] * 2},
        422,
        "too_few_classes",
        ["support"],
    ),
    ("too many classes", {"model": "omniglot-conv4", "support": arrays(51)}, 422, "too_many_classes", ["support"]),
    ("empty support", {"model": "omniglot-conv4", "support": []}, 422, "empty_support", ["support"]),
    (
        "undecodable image",
        {"model": "omniglot-conv4", "support": [{"input": {"image": "aGVsbG8="}, "label": "a"}] + arrays(2)},
        422,
        "invalid_image",
        ["support", 0, "input", "image"],
    ),
    (
        "not base64",
        {"model": "omniglot-conv4", "support": [{"input": {"image": "%%%"}, "label": "a"}] + arrays(2)},
        422,
        "invalid_image",
        ["support", 0, "input", "image"],
    ),
    (
        "oversized image",
        {"model": "omniglot-conv4", "support": [{"input": {"image": png(2100, 2000)}, "label": "a"}] + arrays(2)},
        422,
        "image_too_large",
        ["support", 0, "input", "image"],
    ),
    (
        "image to a vector base",
        {"model": "sinusoid-mlp", "support": [{"input": {"image": png(5, 5)}, "target": 1.0}]},
        422,
        "invalid_input",
        ["support", 0, "input"],
    ),
    (
        "steps out of range",
        {"model": "omniglot-conv4", "support": arrays(2), "steps": 1000},
        422,
        "invalid_steps",
        ["steps"],
    ),
    ("negative steps", {"model": "omniglot-conv4", "support": arrays(2), "steps": -1}, 422, "invalid_steps", ["steps"]),
    (
        "ttl out of range",
        {"model": "omniglot-conv4", "support": arrays(2), "ttl_seconds": 0},
        422,
        "invalid_ttl",
        ["ttl_seconds"],
    ),
    ("unknown field", {"model": "omniglot-conv4", "support": arrays(2), "stepz": 3}, 422, "invalid_request", ["stepz"]),
]


@pytest.mark.parametrize("name, body, status, code, field", CASES, ids=[c[0] for c in CASES])
def test_bad_adaptation_requests(stack, name, body, status, code, field):
    r = raw(stack, "POST", "/v1/adaptations", json=body)
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == code and e["details"][: len(field)] == field and e["message"]


@pytest.mark.parametrize("where", ["input", "target"])
def test_non_finite_numbers_are_refused(stack, where):
    support = [{"input": [1.0], "target": 1.0}, {"input": [2.0], "target": 0.5}]
    support[1][where] = [float("nan")] if where == "input" else float("inf")
    r = raw(
        stack,
        "POST",
        "/v1/adaptations",
        content=json.dumps({"model": "sinusoid-mlp", "support": support}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "non_finite"
    assert r.json()["error"]["details"] == ["support", 1, where]


def test_body_too_large(stack):
    r = raw(
        stack,
        "POST",
        "/v1/adaptations",
        content=b"{" + b" " * (9 * 2**20) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_malformed_json_and_wait_limit(stack):
    r = raw(stack, "POST", "/v1/adaptations", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    r = raw(stack, "POST", "/v1/adaptations?wait=31", json={"model": "sinusoid-mlp", "support": sin_support()})
    assert r.status_code == 422 and r.json()["error"]["details"] == ["query", "wait"]


def test_auth_required(stack):
    r = httpx.get(stack.url + "/v1/adaptations")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert raw(stack, "GET", "/v1/adaptations", key="wrong").status_code == 401


def test_bad_prediction_requests(acme, stack):
    a = acme.create_adaptation("omniglot-conv4", arrays(2), wait=30)
    e = error_of(lambda: acme.predict(a["id"], [[[0.0]]]))
    assert (e.status, e.code, e.details) == (422, "invalid_shape", ["inputs", 0])
    e = error_of(lambda: acme.predict(a["id"], []))
    assert (e.status, e.code) == (422, "empty_inputs")
    e = error_of(lambda: acme.predict("ad_missing", [ONE]))
    assert (e.status, e.code) == (404, "not_found")


# ---- lifecycle, tenants, idempotency ----------------------------------------


def test_delete_then_get_is_404_and_everything_is_gone(acme, stack):
    a = acme.create_adaptation("sinusoid-mlp", sin_support(), wait=30)
    acme.predict(a["id"], [[0.0]])
    acme.delete(a["id"])
    assert error_of(lambda: acme.adaptation(a["id"])).status == 404
    assert error_of(lambda: acme.predict(a["id"], [[0.0]])).status == 404
    r = redis.Redis(port=stack.redis_port, db=1)
    assert not [k for k in r.keys("*") if a["id"].encode() in k]
    assert a["id"] not in [x["id"] for x in acme.adaptations(limit=100)["data"]]


def test_tenants_never_see_each_other(acme, globex):
    a = acme.create_adaptation("sinusoid-mlp", sin_support(), wait=30)
    for call in (
        lambda: globex.adaptation(a["id"]),
        lambda: globex.predict(a["id"], [[0.0]]),
        lambda: globex.delete(a["id"]),
    ):
        e = error_of(call)
        assert (e.status, e.code) == (404, "not_found")
    assert a["id"] not in [x["id"] for x in globex.adaptations(limit=100)["data"]]
    assert acme.adaptation(a["id"])["status"] == "succeeded"  # untouched by globex's delete


def test_idempotent_post_returns_the_same_adaptation(acme):
    first = acme.create_adaptation("sinusoid-mlp", sin_support(), idempotency_key="order-42", wait=30)
    again = acme.create_adaptation("sinusoid-mlp", sin_support(), idempotency_key="order-42")
    assert again["id"] == first["id"] and again["status"] == "succeeded"
    other = acme.create_adaptation("sinusoid-mlp", sin_support(), idempotency_key="order-43")
    assert other["id"] != first["id"]
    e = error_of(lambda: acme.create_adaptation("sinusoid-mlp", sin_support()[:3], idempotency_key="order-42"))
    assert (e.status, e.code) == (409, "idempotency_conflict")


def test_list_is_newest_first_and_paginated(stack):
    with Client(stack.url, api_key=KEYS["globex"]) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support())["id"] for _ in range(3)]
        page = c.adaptations(limit=2)
        assert [x["id"] for x in page["data"]][:2] == ids[::-1][:2] and page["next_cursor"]
        rest = c.adaptations(limit=2, after=page["next_cursor"])
        assert ids[0] in [x["id"] for x in rest["data"]]


# ---- faults -----------------------------------------------------------------


def test_weights_evicted_from_redis_are_rebuilt(acme, stack):
    support, queries, _ = omniglot_task(seed=7, n_way=5, n_query=2)
    a = acme.create_adaptation("omniglot-conv4", support, wait=30)
    b = acme.create_adaptation("omniglot-conv4", support, wait=30)
    r = redis.Redis(port=stack.redis_port, db=1)
    assert r.delete(f"ra:w:{a['id']}") == 1  # as an LRU eviction would
    evicted, kept = acme.predict(a["id"], queries), acme.predict(b["id"], queries)
    assert [p["label"] for p in evicted] == [p["label"] for p in kept]
    for p, q in zip(evicted, kept):
        assert p["scores"] == pytest.approx(q["scores"], abs=1e-5)
    assert r.exists(f"ra:w:{a['id']}")
    metrics = httpx.get(stack.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    assert 'rapid_adapt_weights_cache_total{result="miss_readapt"}' in metrics


def test_prediction_waits_for_a_running_adaptation(new_stack):
    s = new_stack()
    s.start_redis()
    slow_worker(s, 1.5)
    s.start_api()
    s.wait_ready()
    with Client(s.url, api_key=KEYS["acme"]) as c:
        a = c.create_adaptation("sinusoid-mlp", sin_support())
        e = error_of(lambda: c.predict(a["id"], [[0.0]]))
        assert (e.status, e.code) == (409, "not_ready")
        e = error_of(lambda: c.predict(a["id"], [[0.0, 1.0]], wait=20))  # inputs are checked before any wait
        assert (e.status, e.code, e.details) == (422, "invalid_shape", ["inputs", 0])
        values = c.predict(a["id"], [[0.0], [1.0]], wait=20)  # answered once the job is done, not 409
        assert len(values) == 2 and c.adaptation(a["id"])["status"] == "succeeded"


def test_redis_down_is_503_fast_and_recovers(new_stack):
    s = new_stack().start()
    with Client(s.url, api_key=KEYS["acme"], timeout=10, max_retries=0) as c:
        assert c.create_adaptation("sinusoid-mlp", sin_support(), wait=30)["status"] == "succeeded"
        s.stop_redis()
        for call in (lambda: c.create_adaptation("sinusoid-mlp", sin_support()), lambda: c.adaptations()):
            with pytest.raises(RapidAdaptError) as e:
                call()
            assert e.value.status == 503 and e.value.code == "unavailable"  # an answer, not the client's timeout
        r = httpx.post(
            s.url + "/v1/adaptations",
            json={"model": "sinusoid-mlp", "support": sin_support()},
            headers={"Authorization": f"Bearer {KEYS['acme']}"},
            timeout=10,
        )
        assert r.headers["retry-after"] == "1"
        assert httpx.get(s.url + "/readyz", timeout=10).status_code == 503
        s.start_redis()  # same port, empty: the API and worker reconnect by themselves
        made = []
        wait_until(
            lambda: (
                made.append(c.create_adaptation("sinusoid-mlp", sin_support(), wait=5))
                or made[-1]["status"] == "succeeded"
            ),
            60,
            "recovery",
        )
        assert len(c.predict(made[-1]["id"], [[0.0]])) == 1


def test_auth_is_off_only_when_a_setting_says_so(new_stack, monkeypatch):
    monkeypatch.setenv("RAPID_ADAPT_API_KEYS", "t:" + "k" * 24)  # for the module-level app that the import builds
    from app.api.factory import create_app
    from app.core.config import Settings

    with pytest.raises(RuntimeError, match="RAPID_ADAPT_API_KEYS"):
        create_app(Settings(api_keys="", auth="on"))
    with pytest.raises(ValueError, match="tenant:key"):
        create_app(Settings(api_keys="no-colon", auth="on"))
    nowhere = "redis://127.0.0.1:1/0"
    s = new_stack(api_keys="", auth="off", redis_url=nowhere, broker_url=nowhere)
    s.start_api()
    r = httpx.get(s.url + "/v1/adaptations", timeout=10)  # no key needed, but Redis is not there: 503, never a 500
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    events = [json.loads(line) for line in (s.tmp / "api.log").read_text().splitlines() if line.startswith("{")]
    assert any(e["level"] == "warning" and "RAPID_ADAPT_AUTH=off" in e["event"] for e in events)


def test_api_processes_each_serve_and_a_dead_one_is_replaced(new_stack):
    """`python -m app.serve` with WEB_CONCURRENCY=2: two processes on their own
    SO_REUSEPORT sockets both answer, and one killed is started again."""
    s = new_stack()
    s.env["WEB_CONCURRENCY"] = "2"
    s.start_redis()
    s.start_api()
    parent = next(p for p in s.procs if "app.serve" in " ".join(map(str, p.args)))

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(parent.pid), "-f", "spawn_main"], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    wait_until(lambda: len(children()) == 2, 30, "two API processes")
    first = children()
    clients = [httpx.Client(base_url=s.url, timeout=5) for _ in range(16)]  # 16 connections, spread by the kernel
    assert all(c.get("/healthz").status_code == 200 for c in clients)
    # the processes' counters are summed: each scrape sees every request so far, whichever process answers it
    seen = []
    for _ in range(6):
        assert all(c.get("/healthz").status_code == 200 for c in clients)
        seen.append(healthz_count(s.url))
    assert seen == sorted(seen) and seen[-1] >= 16 * 7
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(children()) == 2 and first[0] not in children(), 30, "a replacement API process")
    wait_until(
        lambda: all(httpx.get(s.url + "/healthz", timeout=2).status_code == 200 for _ in range(16)),
        60,
        "both API processes answering",
    )
    for c in clients:
        c.close()


def healthz_count(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rapid_adapt_http_requests_total{") and 'route="/healthz"' in line
    )
