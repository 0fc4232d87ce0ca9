"""What yielding costs a long job and buys a short one (issue 31): `python -m bench.slicing [--rounds 4]`.

One worker, a stack of its own per slice length (JOB_SLICE_SECONDS: the default 0.02, 0.05, the default
before, and 0, jobs never yield, the baseline), rounds alternating between the stacks. Each round:
- alone: acme's long job (a 500-drawing fine-tune job, as bench.flood floods with) and nothing else
  waiting: its run, start to end, is what the watcher's looks cost it;
- shared: the same job while globex posts a 20-way 1-shot fast job about every 0.25 s (at random,
  seeded: a fixed period would lock its arrivals to the watcher's looks), each waited for:
  the long job's run less the time it gave to globex's jobs (`metrics.yielded`) is its own work,
  slowed by the pauses and by sharing the cores with them; globex's jobs' waits in line
  (started_at - created_at) are what the slices buy.
Writes bench/results/slicing.md, slicing.json and slicing.png."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from app.core.config import Settings
from bench.stack import KEYS, Stack

from .flood import adapted, at, bodies
from .report import RESULTS, pyplot, save, save_figure

DEFAULT = Settings.model_fields["job_slice_seconds"].default
SLICES = (DEFAULT, 0.05, 0.0)  # the default first; 0: jobs never yield
EVERY = 0.25  # seconds between globex's jobs, on average (uniform from half to one and a half of it)


def long_job(c: httpx.Client, body: dict) -> dict:
    """acme's long job, waited for -> its run and the time it gave to others' jobs, in ms."""
    r = adapted(c, body)
    given = (r["metrics"].get("yielded") or {}).get("ms", 0.0)
    run = at(r, "finished_at") - at(r, "started_at")
    return {"run_ms": run, "yielded_ms": given, "own_ms": run - given}


def short_jobs(url: str, body: dict, stop: threading.Event, waits: list[float], seed: int) -> None:
    """globex: a fast job about every EVERY seconds until `stop`, each waited for; its wait in line each."""
    pause = random.Random(seed)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['globex']}"}, timeout=120) as c:
        while not stop.wait(EVERY * pause.uniform(0.5, 1.5)):
            r = adapted(c, body)
            waits.append(at(r, "started_at") - at(r, "created_at"))


def one_round(stack: Stack, short: dict, big: dict, seed: int) -> dict:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=120) as c:
        alone = long_job(c, big)
        stop, waits = threading.Event(), []
        globex = threading.Thread(target=short_jobs, args=(stack.url, short, stop, waits, seed))
        globex.start()
        try:
            shared = long_job(c, big)
        finally:
            stop.set()
            globex.join()
    return {"alone": alone, "shared": shared, "short_waits_ms": waits}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.slicing", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    short, _, big, _ = bodies()
    stacks = {}
    try:
        for s in SLICES:
            stack = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-slicing-")), job_slice_seconds=s)
            stack.env["WEB_CONCURRENCY"] = "2"
            stacks[s] = stack.start(workers=1)
            with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEYS['acme']}"}) as c:
                c.post("/v1/adaptations?wait=30", json=short, timeout=60)  # the base loaded, caches warm
        runs = {s: [] for s in SLICES}
        for i in tqdm(range(args.rounds), desc="rounds (each slice length in turn)"):
            for s in SLICES:
                runs[s].append(one_round(stacks[s], short, big, seed=i))
    finally:
        for stack in stacks.values():
            stack.stop()
    rows = {s: summary(rs) for s, rs in runs.items()}
    text = report(rows, args.rounds)
    save("slicing", text, {"rows": {str(s): r for s, r in rows.items()}, "runs": {str(s): r for s, r in runs.items()}})
    plot(rows, RESULTS / "slicing.png")


def summary(rs: list[dict]) -> dict:
    med = statistics.median
    waits = [w for r in rs for w in r["short_waits_ms"]]
    return {
        "alone_run_ms": med(r["alone"]["run_ms"] for r in rs),
        "shared_run_ms": med(r["shared"]["run_ms"] for r in rs),
        "shared_own_ms": med(r["shared"]["own_ms"] for r in rs),
        "shared_yielded_ms": med(r["shared"]["yielded_ms"] for r in rs),
        "short_jobs": len(waits),
        "short_wait_p50_ms": med(waits) if waits else float("nan"),
        "short_wait_max_ms": max(waits) if waits else float("nan"),
    }


def report(rows: dict, rounds: int) -> str:
    base = rows[0.0]["alone_run_ms"]
    lines = [
        "# Slices: what yielding costs a long job and buys a short one",
        "",
        f"`python -m bench.slicing --rounds {rounds}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: one "
        "worker, 2 API processes, a stack per slice length (`JOB_SLICE_SECONDS`), rounds alternating. The long "
        "job: acme's 500-drawing fine-tune job (bench.flood's). Alone: nothing else waits. Shared: globex posts "
        f"a 20-way 1-shot fast job about every {EVERY} s (at random) meanwhile, each waited for. Medians of the "
        "rounds; the cost is against the long job alone with jobs never yielding (0), measured in the same run.",
        "",
        "| slice | long job alone, run ms | cost | shared: run ms | of which given to globex | its own work | "
        "cost | globex's jobs | their wait in line p50 / max ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s, r in rows.items():
        name = f"{s:g} s" + (" (default)" if s == DEFAULT else "") if s else "0 (never yield; baseline)"
        lines.append(
            f"| {name} | {r['alone_run_ms']:.0f} | {r['alone_run_ms'] / base:.3f}x | {r['shared_run_ms']:.0f} | "
            f"{r['shared_yielded_ms']:.0f} | {r['shared_own_ms']:.0f} | {r['shared_own_ms'] / base:.3f}x | "
            f"{r['short_jobs']} | {r['short_wait_p50_ms']:.0f} / {r['short_wait_max_ms']:.0f} |"
        )
    lines += ["", "![long job's cost and short jobs' wait by slice length](slicing.png)", ""]
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [f"{s:g} s" if s else "never yield" for s in rows]
    base = rows[0.0]["alone_run_ms"]
    a.bar(names, [r["shared_own_ms"] / base for r in rows.values()], color="tab:blue", label="shared (own work)")
    a.plot(names, [r["alone_run_ms"] / base for r in rows.values()], "ko", label="alone")
    a.axhline(1.0, color="gray", lw=0.8)
    a.set_ylabel("long job's run / alone, never yielding")
    a.legend()
    b.bar(names, [r["short_wait_p50_ms"] for r in rows.values()], color="tab:orange")
    b.set_yscale("log")
    b.set_ylabel("short job's wait in line, p50 ms")
    for ax in (a, b):
        ax.set_xlabel("JOB_SLICE_SECONDS")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
