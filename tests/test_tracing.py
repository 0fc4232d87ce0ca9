"""Traces (issue 32): one POST with ?wait= makes one trace that covers the API, the job on the
worker (a child of the request, through the record) and the store; its trace id is in the
worker's log line and the adaptation's events. Off (the default), nothing is traced."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import redis

from app.demo import sinusoid_task
from bench.stack import KEYS, ROOT, wait_until


def test_one_post_with_wait_is_one_trace_across_the_api_the_job_and_the_store(redis_server):
    redis.Redis(port=redis_server.redis_port).flushall()
    run = subprocess.run(
        [sys.executable, "-m", "tests.traced_round_trip", str(redis_server.redis_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    spans, aid = out["spans"], out["adaptation"]["id"]
    assert out["adaptation"]["status"] == "succeeded"
    (server,) = [s for s in spans if s["kind"] == "SERVER" and s["name"] == "POST /v1/adaptations"]
    trace = server["trace_id"]
    (job,) = [s for s in spans if s["name"] == "adaptation job"]
    assert job["trace_id"] == trace and job["parent_id"] == server["span_id"]  # the request's child
    assert job["attributes"]["adaptation.id"] == aid and job["attributes"]["tenant"] == "acme"
    in_trace = [s for s in spans if s["trace_id"] == trace]
    names = {s["name"] for s in in_trace}
    assert {"store start", "load base", "adapt fast", "embed", "steps"} <= names, names
    by_id = {s["span_id"]: s for s in in_trace}

    def under(span, ancestor) -> bool:
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            if span is ancestor:
                return True
        return False

    redis_spans = [s for s in in_trace if s["attributes"].get("db.system") == "redis"]
    assert any(under(s, server) and not under(s, job) for s in redis_spans)  # the API's writes
    assert any(under(s, job) and s["name"] == "EVALSHA" for s in redis_spans)  # the job's end, written
    job_parts = {"adaptation job", "store start", "load base", "adapt fast", "embed", "steps"}
    assert all(s["trace_id"] == trace for s in spans if s["name"] in job_parts)  # none in another trace
    worker_line = next(e for e in out["logs"] if e["event"] == "adaptation succeeded")
    assert worker_line["trace_id"] == trace and worker_line["adaptation_id"] == aid
    request_line = next(e for e in out["logs"] if e["event"] == "request" and e.get("route") == "/v1/adaptations")
    assert request_line["trace_id"] == trace
    assert out["events"][0]["type"] == "queued" and out["events"][0]["data"]["trace_id"] == trace
    # a prediction pass serves several requests: a span of its own, linked to each request it served
    requests = [s for s in spans if s["kind"] == "SERVER" and s["name"].startswith("POST /v1/adaptations/{aid}/pred")]
    passes = [s for s in spans if s["name"] == "prediction pass"]
    assert len(requests) == 3 and 1 <= len(passes) <= 3
    assert sorted(link for p in passes for link in p["links"]) == sorted(r["span_id"] for r in requests)
    assert sum(int(p["attributes"]["images"]) for p in passes) == 6


def test_untraced_by_default(api):
    from app.core import tracing
    from app.demo import sinusoid_task

    assert not tracing.enabled() and tracing.carrier() == {}
    made = api.request("POST", "/v1/adaptations", json={"model": "sinusoid-mlp", "support": sinusoid_task(3)[0]})
    events = api.request("GET", f"/v1/adaptations/{made.json()['id']}/events").json()["data"]
    assert events[0]["type"] == "queued" and not events[0].get("data")
    record = api.app.state.store.get("acme", made.json()["id"])
    assert "trace" not in record


def test_a_real_stack_with_an_exporter_set_traces_the_request_into_the_workers_log(new_stack):
    """OTEL_TRACES_EXPORTER=console on real processes: the API and each pool process of the worker
    (set up after the fork) trace; the worker's line carries the request's trace id."""
    s = new_stack()
    s.env |= {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    s.start()
    headers = {"Authorization": f"Bearer {KEYS['acme']}"}
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(3)[0]}
    made = httpx.post(f"{s.url}/v1/adaptations?wait=20", json=body, headers=headers, timeout=30).json()
    assert made["status"] == "succeeded"
    events = httpx.get(f"{s.url}/v1/adaptations/{made['id']}/events", headers=headers).json()["data"]
    trace = events[0]["data"]["trace_id"]

    def text() -> str:  # every process's output in full (console spans are long)
        return "\n".join(f.read_text(errors="replace") for f in sorted(s.tmp.glob("*.log")))

    def lines() -> list[dict]:
        return [json.loads(x) for x in text().splitlines() if x.startswith('{"ts"')]

    worker = wait_until(
        lambda: [e for e in lines() if e["event"] == "adaptation succeeded" and e.get("trace_id") == trace], 10, "log"
    )
    assert worker[0]["adaptation_id"] == made["id"]
    assert any(e["event"] == "request" and e.get("trace_id") == trace for e in lines())  # the API's line
    wait_until(lambda: f'"trace_id": "0x{trace}"' in text() and '"name": "adaptation job"' in text(), 10, "spans")
