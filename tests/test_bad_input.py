"""A corpus of malformed requests, in process (the app through httpx's ASGI transport on a
real Redis) and against a real stack (uvicorn): every one is answered 4xx with the error
envelope, none 5xx. The cases are built from mutations of valid requests, field by
field, plus malformed HTTP; `test_the_corpus_is_large` keeps it at 250 or more."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import pytest
import redis
from PIL import Image

from app.api.factory import create_app
from bench.stack import KEYS

from .conftest import InProcess, make_settings, run_next_job

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
MISSING = object()


def png_b64(w: int = 8, h: int = 8) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bomb_png(w: int, h: int) -> str:
    """A tiny PNG whose header claims w x h pixels."""
    raw = b"".join(b"\x00" + b"\xff" * 1 for _ in range(1))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


ONE = [[[0.0] * 28 for _ in range(28)]]
GOOD_IMAGE = {"input": ONE, "label": "a"}
GOOD_SINE = {"model": "sinusoid-mlp", "support": [{"input": [1.0], "target": 0.5}, {"input": [2.0], "target": 0.1}]}
GOOD_OMNI = {"model": "omniglot-conv4", "support": [GOOD_IMAGE, {"input": ONE, "label": "b"}]}

BAD_VALUES = [None, True, 1, -1, 1.5, "x", "", [], {}, [[]], {"a": 1}, 10**400, -(10**400), "\u0000", "é" * 300]


def with_field(body: dict, path: list, value) -> dict:
    body = json.loads(json.dumps(body))
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is MISSING:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


def create_cases() -> list:
    cases = []
    for body in ([], "x", 1, None, {}, {"model": "omniglot-conv4"}, {"support": []}):
        cases.append(("POST", "/v1/adaptations", {"json": body}))
    for path in (["model"], ["support"], ["steps"], ["ttl_seconds"], ["mode"], ["metadata"]):
        for v in BAD_VALUES + [MISSING]:
            if path[0] in ("steps", "ttl_seconds", "mode", "metadata") and v in (None, MISSING):
                continue  # optional: null or absent is valid
            if path == ["ttl_seconds"] and v in (1,) or path == ["steps"] and v in (1,):
                continue
            cases.append(("POST", "/v1/adaptations", {"json": with_field(GOOD_SINE, path, v)}))
    for path in (["support", 0, "input"], ["support", 0, "label"], ["support", 0, "target"]):
        for v in BAD_VALUES + [[1.0] * 3, [[1.0]], [float("nan")], [float("inf")], MISSING]:
            if path[-1] == "target" and v is MISSING or path[-1] == "label" and v in (None, MISSING):
                continue
            cases.append(("POST", "/v1/adaptations", {"json": with_field(GOOD_SINE, path, v)}))
    images = [
        "not base64!",
        "",
        "aGVsbG8=",
        base64.b64encode(b"GIF89a" + b"\x00" * 20).decode(),
        png_b64(1, 40_000),
        bomb_png(100_000, 100_000),
        bomb_png(1, 4_000_000),
        png_b64()[:40],
        png_b64() + "===",
        "A" * 10_001,
    ]
    for image in images:
        cases.append(
            ("POST", "/v1/adaptations", {"json": with_field(GOOD_OMNI, ["support", 0, "input"], {"image": image})})
        )
    for label in (2**64, -(2**64), 2**53, 1.5, True, "", "x" * 201, [1], {"a": 1}, None):
        cases.append(("POST", "/v1/adaptations", {"json": with_field(GOOD_OMNI, ["support", 0, "label"], label)}))
    for meta in (
        {f"k{i}": "v" for i in range(17)},
        {"": "v"},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": None},
        {"k": ["v"]},
    ):
        cases.append(("POST", "/v1/adaptations", {"json": GOOD_SINE | {"metadata": meta}}))
    for mode, steps in (("fast", 11), ("fine-tune", 21), ("auto", 11), ("fast", -1), ("slow", 1)):
        cases.append(("POST", "/v1/adaptations", {"json": GOOD_OMNI | {"mode": mode, "steps": steps}}))
    cases += [
        ("POST", "/v1/adaptations", {"json": GOOD_SINE | {"unknown": 1}}),
        ("POST", "/v1/adaptations", {"json": {"model": "omniglot-conv4", "support": [GOOD_IMAGE] * 2}}),
        ("POST", "/v1/adaptations", {"json": {"model": "omniglot-conv4", "support": [GOOD_IMAGE] * 501}}),
        ("POST", "/v1/adaptations", {"json": GOOD_SINE, "headers": {"Idempotency-Key": "k" * 201}}),
        ("POST", "/v1/adaptations", {"content": b"{nope", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/v1/adaptations", {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}),
        (
            "POST",
            "/v1/adaptations",
            {
                "content": b'{"model": "sinusoid-mlp", "support": [{"input": [1e999999], "target": 1}]}',
                "headers": {"Content-Type": "application/json"},
            },
        ),
        (
            "POST",
            "/v1/adaptations",
            {
                "content": b'{"model": "sinusoid-mlp", "support": [{"input": [' + b"9" * 5000 + b'], "target": 1}]}',
                "headers": {"Content-Type": "application/json"},
            },
        ),
        ("POST", "/v1/adaptations", {"content": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}),
        (
            "POST",
            "/v1/adaptations",
            {"content": json.dumps(GOOD_SINE).encode(), "headers": {"Content-Type": "text/plain"}},
        ),
        ("POST", "/v1/adaptations", {"json": GOOD_SINE, "headers": {"Authorization": "Bearer"}}),
        ("POST", "/v1/adaptations", {"json": GOOD_SINE, "headers": {"Authorization": "Basic abc"}}),
        ("POST", "/v1/adaptations", {"json": GOOD_SINE, "headers": {"Authorization": "Bearer " + "k" * 10_000}}),
    ]
    for wait in ("-1", "31", "x", "nan", "inf", "1e400", ""):
        cases.append(("POST", f"/v1/adaptations?wait={wait}", {"json": GOOD_SINE}))
    return cases


def read_cases() -> list:
    cases = []
    for q in (
        "limit=0",
        "limit=101",
        "limit=x",
        "limit=-1",
        "limit=1e3",
        "after=%C2%B2",
        "after=9223372036854775806",
        "cursor=9223372036854775806",
        "cursor=%C2%B2",
        "after=!!!",
        "after=" + "A" * 300,
        "after=MS4wfGFkX3g",
        "after=bmFufGFkXzAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw",
        "cursor=-5",
        "metadata[]=x",
        "metadata[k=x",
        "after=aW5mfGFkX2FiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWI",
    ):
        cases.append(("GET", f"/v1/adaptations?{q}", {}))
    ids = ["x", "ad_" + "0" * 32, "ad_" + "z" * 32, "%2e%2e", "a" * 5000, "ad_%00", "ä"]
    for aid in ids:
        cases += [
            ("GET", f"/v1/adaptations/{aid}", {}),
            ("DELETE", f"/v1/adaptations/{aid}", {}),
            ("POST", f"/v1/adaptations/{aid}/cancel", {}),
            ("GET", f"/v1/adaptations/{aid}/events", {}),
            ("POST", f"/v1/adaptations/{aid}/predictions", {"json": {"inputs": [[0.0]]}}),
        ]
    for q in ("wait=-1", "wait=99", "wait=x"):
        cases.append(("GET", f"/v1/adaptations/ad_{'0' * 32}?{q}", {}))
    for name in ("nope", "a" * 3000, "%00", "..", "omniglot-conv4/extra"):
        cases.append(("GET", f"/v1/models/{name}", {}))
    for method, path in (
        ("PUT", "/v1/models"),
        ("PATCH", "/v1/adaptations"),
        ("DELETE", "/v1/models"),
        ("POST", "/v1/models"),
        ("PUT", "/healthz"),
        ("POST", "/readyz"),
        ("GET", "/nope"),
        ("GET", "/v2/adaptations"),
        ("TRACE", "/v1/adaptations"),
    ):
        cases.append((method, path, {}))
    return cases


def prediction_cases() -> list:
    """Against a real, succeeded adaptation of each base (PREDICT_ON is replaced by its id)."""
    cases = []
    for inputs in (
        None,
        [],
        {},
        "x",
        1,
        [None],
        [["x"]],
        [[1.0, 2.0]],
        [[[1.0]]],
        [[float("nan")]],
        [[float("inf")]],
        [[10**400]],
        [{"image": png_b64()}],
        [[True]],
        [[0.0]] * 1001,
        [{"image": 1}],
        [{"image": "x", "extra": 1}],
    ):
        cases.append(("POST", "/v1/adaptations/SINE/predictions", {"json": {"inputs": inputs}}))
    for inputs in (
        [[0.0]],
        [{"image": "!!"}],
        [{"image": bomb_png(50_000, 50_000)}],
        [{"image": png_b64(1, 40_000)}],
        [ONE[0]],
        [[ONE]],
        [{"image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30).decode()}],
    ):
        cases.append(("POST", "/v1/adaptations/OMNI/predictions", {"json": {"inputs": inputs}}))
    cases += [
        ("POST", "/v1/adaptations/SINE/predictions", {"json": {"inputs": [[0.0]], "extra": 1}}),
        ("POST", "/v1/adaptations/SINE/predictions?wait=-3", {"json": {"inputs": [[0.0]]}}),
        ("GET", "/v1/adaptations/SINE/events?after=ev_x", {}),
        ("GET", "/v1/adaptations/SINE/events?after=ev_99999999999999", {}),
        ("GET", "/v1/adaptations/SINE/events?limit=0", {}),
        ("POST", "/v1/adaptations/SINE/cancel", {}),  # finished: 409
    ]
    return cases


CASES = create_cases() + read_cases() + prediction_cases()


def test_the_corpus_is_large():
    assert len(CASES) >= 250, len(CASES)


@pytest.fixture(scope="module", params=["in-process", pytest.param("stack", marks=pytest.mark.stack)])
def service(request, redis_server):
    """-> (send(method, path, headers, content) -> response, {name: adaptation id})."""
    if request.param == "stack":
        with httpx.Client(base_url=request.getfixturevalue("stack").url, timeout=60) as c:
            targets = {
                "SINE": c.post("/v1/adaptations?wait=30", json=GOOD_SINE, headers=AUTH).json()["id"],
                "OMNI": c.post("/v1/adaptations?wait=30", json=GOOD_OMNI | {"mode": "fast"}, headers=AUTH).json()["id"],
            }
            yield (
                (lambda method, path, headers, content: c.request(method, path, headers=headers, content=content)),
                targets,
            )
        return
    redis.Redis(port=redis_server.redis_port).flushall()
    settings = make_settings(redis_server)
    with InProcess(create_app(settings)) as api:
        targets = {}
        for name, body in (("SINE", GOOD_SINE), ("OMNI", GOOD_OMNI | {"mode": "fast"})):
            targets[name] = api.request("POST", "/v1/adaptations", json=body).json()["id"]
            assert run_next_job(settings) == "succeeded"
        yield (
            (lambda method, path, headers, content: api.request(method, path, None, headers=headers, content=content)),
            targets,
        )


@pytest.mark.parametrize("method, path, kw", CASES, ids=[f"{i:03d}-{c[0]}" for i, c in enumerate(CASES)])
def test_no_malformed_request_gets_a_5xx(service, method, path, kw):
    send, targets = service
    for name, aid in targets.items():
        path = path.replace(f"/{name}/", f"/{aid}/")
    headers = AUTH | kw.get("headers", {})
    content = kw.get("content")
    if "json" in kw:  # encoded here: httpx refuses NaN and infinities, which are the point of some cases
        content, headers = json.dumps(kw["json"]).encode(), {"Content-Type": "application/json"} | headers
    r = send(method, path, headers, content)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        e = r.json()["error"]
        assert isinstance(e["code"], str) and e["message"] and isinstance(e["details"], list)
