"""How soon a killed worker's job is done by another: `python -m bench.recovery --rounds 5`.

Each round starts a stack of its own with default settings (2 s heartbeats, Celery's 300 s
visibility timeout) and two workers, queues 10 fine-tune jobs (20-way 5-shot), kills one
worker (SIGKILL, with its pool child) while it holds a job, and times from the kill to that
job's `succeeded`. The baseline, measured in the same rounds, is the time an untouched job of
the same queue took from its start to its end: what the killed job would have cost had its
worker lived. The bar (DESIGN.md, reliability) is 30 s; without the reaper, Celery alone
would redeliver the job after its visibility timeout (300 s). Writes bench/results/recovery.md
and recovery.json."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import redis
import torch
from tqdm import tqdm

from app.core import keys
from bench.stack import KEYS, Stack, wait_until
from rapid_adapt_client import Client

from .report import save


def support(seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input": torch.rand(1, 28, 28, generator=g).tolist(), "label": k} for k in range(20) for _ in range(5)]


def seconds(a: str, b: str) -> float:
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def one_round() -> dict:
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-recovery-")), worker_heartbeat_seconds=2.0)
    try:
        s.start_redis()
        victim = s.start_worker()
        s.start_worker()
        s.start_api()
        s.wait_ready()
        r = redis.Redis(port=s.redis_port, db=1)
        with Client(s.url, KEYS["acme"]) as c:
            body = lambda i: {"model": "omniglot-conv4", "support": support(i), "mode": "fine-tune"}  # noqa: E731
            ids = [c.create_adaptation(**body(i))["id"] for i in range(10)]
            mine = f"w0-{s.redis_port}@"
            held = lambda: [a.decode() for a, v in r.hgetall(keys.flights("acme")).items() if mine in v.decode()]  # noqa: E731
            wait_until(held, 60, "a job on the victim")
            os.killpg(victim.pid, signal.SIGKILL)
            killed, orphans = time.monotonic(), held()
            if not orphans:  # it finished between the look and the kill: nothing to time this round
                return one_round()
            orphan = orphans[0]
            wait_until(lambda: c.adaptation(orphan)["status"] == "succeeded", 120, "the orphan")
            recovered = time.monotonic() - killed
            wait_until(lambda: all(c.adaptation(a)["status"] == "succeeded" for a in ids), 120, "every job")
            runs = [c.adaptation(a) for a in ids if a != orphan]
            normal = statistics.median(seconds(a["started_at"], a["finished_at"]) for a in runs)
            lost = sum(c.adaptation(a)["status"] != "succeeded" for a in ids)
        return {"recovered_s": recovered, "normal_job_s": normal, "lost": lost}
    finally:
        s.stop()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    rounds = [one_round() for _ in tqdm(range(args.rounds), desc="rounds")]
    rec = statistics.median(x["recovered_s"] for x in rounds)
    base = statistics.median(x["normal_job_s"] for x in rounds)
    each = lambda key: ", ".join(f"{x[key]:.1f}" for x in rounds)  # noqa: E731
    text = (
        f"# A killed worker's job\n\n`python -m bench.recovery --rounds {args.rounds}` on {os.cpu_count()} cores, "
        "default settings (2 s heartbeats), 20-way 5-shot fine-tune jobs, two workers, one killed mid-job.\n\n"
        "| figure | median | per round |\n| --- | --- | --- |\n"
        f"| kill -> the killed job succeeded | {rec:.1f} s | {each('recovered_s')} |\n"
        f"| baseline: a job of the same queue, start -> end | {base:.1f} s | "
        f"{each('normal_job_s')} |\n"
        f"| jobs lost (of 10 a round) | {sum(x['lost'] for x in rounds)} | |\n\n"
        f"Bar: 30 s (DESIGN.md); Celery alone would redeliver after its 300 s visibility timeout.\n"
    )
    save("recovery", text, {"rounds": rounds, "median_recovered_s": rec, "median_normal_job_s": base})


if __name__ == "__main__":
    main()
