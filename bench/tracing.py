"""What tracing costs the HTTP round trip: `python -m bench.tracing [--rounds 8] [--per-round 15]`.

Two stacks side by side (Redis, one worker, one API each): tracing off (the default) and on
(OTEL_TRACES_EXPORTER=otlp, exporting to a receiver in this process that answers 204, as a
collector would). Rounds alternate between them, so the machine's noise falls on both; each
request is a POST ?wait= of a 10-way Omniglot support set to succeeded, as bench.run's B.
Off has no build without the tracing calls to compare with, so its cost is measured directly:
the calls a request makes with tracing off (carrying the context, the job's span, the phases,
the log lines' span lookups), timed in process, against the round trip's median. Writes
bench/results/tracing.md and tracing.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import httpx
from tqdm import tqdm

from bench.report import save
from bench.run import omniglot_bodies
from bench.stack import KEYS, Receiver, Stack


def off_path_seconds() -> float:
    """The tracing calls of one request and its job with tracing off: the create's carrier, the
    queued event's trace id, the job's span, seven phases, and four log lines' span lookups."""
    from opentelemetry import trace

    from app.core import tracing

    assert not tracing.enabled()
    record = {"id": "ad_x", "tenant": "acme", "model": "m"}

    def one() -> None:
        tracing.carrier()
        tracing.trace_id({})
        with tracing.job_span(record, 0):
            for name in ("load base", "adapt fast", "embed", "steps", "head", "x", "y"):
                with tracing.phase(name):
                    pass
        for _ in range(4):
            trace.get_current_span().get_span_context().is_valid  # noqa: B018

    n = 20_000
    return min(timeit.repeat(one, number=n, repeat=5)) / n


def measure(rounds: int, per_round: int) -> dict:
    """Round trips (ms) with tracing off and on, the bytes of spans exported, the off path's µs."""
    collector = Receiver()  # an OTLP/HTTP endpoint: the spans' bytes, counted
    stacks = {
        "off": Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-trace-off-"))),
        "on": Stack(
            Path(tempfile.mkdtemp(prefix="rapid-adapt-trace-on-")),
        ),
    }
    stacks["on"].env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
    bodies = omniglot_bodies(10)
    lat: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for s in stacks.values():
            s.start()
        clients = {k: httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=60)
                   for k, s in stacks.items()}  # fmt: skip
        for c in clients.values():
            for b in bodies[:3]:
                c.post("/v1/adaptations?wait=10", json=b)  # warm up
        for r in tqdm(range(rounds), desc="tracing rounds (off, on)"):
            for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                for i in range(per_round):
                    t = time.perf_counter()
                    got = clients[name].post("/v1/adaptations?wait=10", json=bodies[i % len(bodies)])
                    lat[name].append((time.perf_counter() - t) * 1000)
                    assert got.status_code == 200 and got.json()["status"] == "succeeded", got.text
        time.sleep(6)  # the batch exporters' last flush
        for c in clients.values():
            c.close()
    finally:
        for s in stacks.values():
            s.stop()
        collector.close()
    received = sum(len(body) for _, body in collector.calls)
    return {"off": lat["off"], "on": lat["on"], "off_path_us": off_path_seconds() * 1e6, "bytes": received}


def rows(m: dict) -> list[str]:
    """The table's rows and the off path's line."""
    off = statistics.median(m["off"])
    lines = ["| tracing | requests | p50 | p95 | vs off |", "| --- | --- | --- | --- | --- |"]
    for name in ("off", "on"):
        xs = sorted(m[name])
        p50, p95 = statistics.median(xs), xs[int(0.95 * (len(xs) - 1))]
        lines.append(f"| {name} | {len(xs)} | {p50:.1f} ms | {p95:.1f} ms | {p50 / off:.3f}x |")
    return lines + [
        "",
        f"Off: the tracing calls of one request and its job take {m['off_path_us']:.2f} µs in process (nothing "
        f"installed: no-op spans), {100 * m['off_path_us'] / 1000 / off:.4f}% of the off p50.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=15)
    args = ap.parse_args()
    m = measure(args.rounds, args.per_round)
    lines = [
        "# Tracing's cost to the HTTP round trip",
        "",
        f"`python -m bench.tracing --rounds {args.rounds} --per-round {args.per_round}`: POST ?wait= of a 10-way "
        "Omniglot support set to succeeded, two stacks side by side, rounds alternating; on exports OTLP/HTTP to "
        f"a receiver in the bench process ({m['bytes']:,} bytes of spans received).",
        "",
        *rows(m),
        "",
        "Bars (issue 32): off at most 2% of the round trip's p50; on at most 10%.",
    ]
    save("tracing", "\n".join(lines) + "\n", m)


if __name__ == "__main__":
    main()
