"""One POST with ?wait= through the app and a job run in this process, traced into an in-memory
exporter; prints the spans and the log lines as JSON. A process of its own (tests/test_tracing.py
runs it): a tracer provider, once set, is the process's for good.

    python -m tests.traced_round_trip REDIS_PORT"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core import tracing


def main(port: int) -> None:
    from app.api.factory import create_app
    from app.demo import sinusoid_task
    from bench.stack import Stack

    from .conftest import KEYS, InProcess, make_settings, run_next_job

    spans = InMemorySpanExporter()
    assert tracing.setup("rapid-adapt-test", exporter=spans)
    redis_server = Stack.__new__(Stack)
    redis_server.redis_port = port
    settings = make_settings(redis_server)
    app = create_app(settings)  # traced already: its requests are server spans
    lines = io.StringIO()
    logging.getLogger().handlers[0].stream = lines  # the JSON lines, kept
    with InProcess(app) as api:
        timer = threading.Timer(0.5, run_next_job, (settings,))
        timer.start()
        body = {"model": "sinusoid-mlp", "support": sinusoid_task(3)[0]}
        made = api.request("POST", "/v1/adaptations?wait=10", json=body).json()
        timer.join()
        events = api.request("GET", f"/v1/adaptations/{made['id']}/events").json()["data"]
        path, auth = f"/v1/adaptations/{made['id']}/predictions", {"Authorization": f"Bearer {KEYS['acme']}"}

        async def at_once():  # passes may serve several
            return await asyncio.gather(
                *[api.client.post(path, json={"inputs": [[0.5], [1.0]]}, headers=auth) for _ in range(3)]
            )

        answers = api._run(at_once())
        assert all(a.status_code == 200 for a in answers)
    tracing.flush()
    out = {
        "adaptation": made,
        "events": events,
        "spans": [
            {
                "name": s.name,
                "trace_id": format(s.context.trace_id, "032x"),
                "span_id": format(s.context.span_id, "016x"),
                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                "kind": s.kind.name,
                "attributes": {k: str(v) for k, v in s.attributes.items()},
                "links": [format(link.context.span_id, "016x") for link in s.links],
            }
            for s in spans.get_finished_spans()
        ],
        "logs": [json.loads(line) for line in lines.getvalue().splitlines() if line.startswith("{")],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
