"""Redis commands per adaptation and per prediction: `python -m bench.commands --jobs 50`.

A stack of its own whose broker is a second Redis, so the store's commands are counted
apart from Celery's. The store Redis's `INFO commandstats` is read before and after N
5-point sinusoid adaptations created with `?wait=30` (create, run, store, answer) and then N
warm predictions; the idle rate (heartbeats, the reaper's turn), measured for the same
length of time with nothing to do, is subtracted. The broker's commands are counted the same
way. Writes bench/results/commands.md and commands.json (the capacity model's inputs,
issue 34: at most 30 commands per adaptation)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import redis

from app.demo import sinusoid_task
from bench.stack import KEYS, Stack, free_port, wait_until

from .report import save


def calls(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def meters(r: redis.Redis) -> dict[str, float]:
    """Redis CPU spent in commands (µs, commandstats' usec), all of its CPU (µs, with the network),
    and bytes in and out, so far."""
    net, cpu = r.info("stats"), r.info("cpu")
    usec = sum(v["usec"] for v in r.info("commandstats").values())
    process = 1e6 * (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
    return {"cpu_us": usec, "process_us": process} | {
        "bytes_in": net["total_net_input_bytes"],
        "bytes_out": net["total_net_output_bytes"],
    }


def diff(after: dict, before: dict) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def per(counts: dict, n: int, idle: dict, idle_scale: float) -> dict[str, float]:
    out = {k: (v - idle.get(k, 0) * idle_scale) / n for k, v in counts.items()}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0.05}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.commands", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=50)
    args = p.parse_args(argv)
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-commands-")))
    broker_port = free_port()
    (s.tmp / "broker").mkdir()
    broker = s._spawn(
        [
            shutil.which("redis-server"),
            "--port",
            str(broker_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(s.tmp / "broker"),
        ],
        "broker",
    )
    s.env["RAPID_ADAPT_BROKER_URL"] = f"redis://127.0.0.1:{broker_port}/0"
    s.env["RAPID_ADAPT_WORKER_HEARTBEAT_SECONDS"] = "2"
    try:
        s.start_redis()
        wait_until(lambda: redis.Redis(port=broker_port).ping(), 10, "the broker")
        s.start_worker()
        s.start_api()
        s.wait_ready()
        store, queue = redis.Redis(port=s.redis_port), redis.Redis(port=broker_port)
        body = {"model": "sinusoid-mlp", "support": sinusoid_task(0)[0]}
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=60) as c:
            c.post("/v1/adaptations?wait=30", json=body)  # warm
            m0, before, qbefore, t = meters(store), calls(store), calls(queue), time.monotonic()
            ids = [c.post("/v1/adaptations?wait=30", json=body).json()["id"] for _ in range(args.jobs)]
            adapt_s = time.monotonic() - t
            m1, mid, qmid, t = meters(store), calls(store), calls(queue), time.monotonic()
            for aid in ids:
                c.post(f"/v1/adaptations/{aid}/predictions", json={"inputs": [[0.5]]}).raise_for_status()
            predict_s = time.monotonic() - t
            m2, after = meters(store), calls(store)
            idle_before, t = calls(store), time.monotonic()
            qidle_before, m3 = calls(queue), meters(store)
            time.sleep(10)
            idle, qidle, idle_s = (
                diff(calls(store), idle_before),
                diff(calls(queue), qidle_before),
                time.monotonic() - t,
            )
            midle = diff(meters(store), m3)
    finally:
        s.stop()
        broker.terminate()
    adapt = per(diff(mid, before), args.jobs, idle, adapt_s / idle_s)
    predict = per(diff(after, mid), args.jobs, idle, predict_s / idle_s)
    broker_adapt = per(diff(qmid, qbefore), args.jobs, qidle, adapt_s / idle_s)
    cost = {
        "adaptation": per(diff(m1, m0), args.jobs, midle, adapt_s / idle_s),
        "prediction": per(diff(m2, m1), args.jobs, midle, predict_s / idle_s),
    }
    total = lambda d: sum(d.values())  # noqa: E731
    fmt = lambda d: "{:.0f} µs ({:.0f} µs in all) / {:,.0f} B in / {:,.0f} B out".format(  # noqa: E731
        *(d.get(k, 0) for k in ("cpu_us", "process_us", "bytes_in", "bytes_out"))
    )
    top = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in list(d.items())[:8])  # noqa: E731
    text = (
        "# Redis commands per adaptation and per prediction\n\n"
        f"`python -m bench.commands --jobs {args.jobs}`: a 5-point sinusoid adaptation created with `?wait=30`, "
        "then one warm prediction each; the idle rate of the same stack subtracted.\n\n"
        "| per | store commands | the most frequent | store CPU: commandstats (scripts count their inner commands "
        "again) and the whole process / network | broker commands |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| adaptation (create, wait, run, store) | {total(adapt):.1f} | {top(adapt)} | {fmt(cost['adaptation'])} "
        f"| {total(broker_adapt):.1f} |\n"
        f"| warm prediction | {total(predict):.1f} | {top(predict)} | {fmt(cost['prediction'])} | |\n\n"
        "Bar (issue 34): at most 30 commands per adaptation.\n"
    )
    figures = {"adaptation": adapt, "prediction": predict, "broker_per_adaptation": broker_adapt, "cost": cost}
    save("commands", text, figures)


if __name__ == "__main__":
    main()
