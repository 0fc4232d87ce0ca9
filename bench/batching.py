"""Batched adaptation (issue 31): `python -m bench.batching [--rounds 3] [--workers 2]`.

64 waiting 20-way 1-shot fast jobs (Omniglot PNGs over HTTP, two tenants) are put in line
while the workers are stopped (SIGSTOP), then the workers go on: jobs/s is 64 over the time
from then to the last job's end, for a stack whose workers adapt one job at a time
(RAPID_ADAPT_JOB_BATCH_MAX=1, the baseline) and one that batches (the default), rounds
alternating. In process, the same 64 support sets through `adapt` one at a time and as one
batch show the compute's share (what batching cannot remove on a CPU). Writes
bench/results/batching.md, batching.json and batching.png."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from app.core.config import Settings
from bench.stack import KEYS, Stack
from models import registry, runtime
from models.adapt import adapt, chunked, no_pause
from models.research import omniglot

from .report import RESULTS, pyplot, save, save_figure
from .run import omniglot_bodies, timed

JOBS = 64
QUOTAS = {"tenant_max_jobs": 10_000, "tenant_max_adaptations": 100_000, "tenant_max_bytes": 2**40}


def waiting_jobs_per_s(stack: Stack, bodies: list[dict]) -> tuple[float, list[int]]:
    """-> (jobs/s of len(bodies) jobs put in line while the workers were stopped, each job's
    batch size)."""
    auth = [{"Authorization": f"Bearer {KEYS[t]}"} for t in ("acme", "globex")]
    groups = [os.getpgid(w.pid) for w in stack.workers]
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        for g in groups:
            os.killpg(g, signal.SIGSTOP)
        try:
            create = lambda i: c.post("/v1/adaptations", json=bodies[i], headers=auth[i % 2]).json()["id"]
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(create, range(len(bodies))))
        finally:
            started = time.perf_counter()
            for g in groups:
                os.killpg(g, signal.SIGCONT)
        done = []
        for i, aid in enumerate(ids):
            while (a := c.get(f"/v1/adaptations/{aid}?wait=10", headers=auth[i % 2]).json())["status"] != "succeeded":
                assert a["status"] in ("queued", "running"), a
            done.append(a)
    seconds = time.perf_counter() - started
    return len(bodies) / seconds, [a["metrics"]["batched"] or 1 for a in done]


def in_process(bodies_n: int) -> dict:
    """ms of `adapt` over the same kind of 64 support sets: one at a time, and as one batch; and of
    their embedding alone (the pass `adapt` makes over every job's support views, chunked as it
    does), with its floating-point operations: the work no batching removes, and the rate at which
    this CPU does it."""
    runtime.configure(1)  # as a worker: one torch thread
    model, _ = registry.shipped().load("omniglot-conv4")
    sampler = omniglot.EpisodeSampler(omniglot.load(), "test")
    gen = torch.Generator().manual_seed(1)
    tasks = [sampler.sample(20, 1, 1, gen)[:2] for _ in range(bodies_n)]
    x, y = torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks])
    with FlopCounterMode(display=False) as counted, torch.no_grad():
        model.embed_support(x[0, :1])

    def embedding():
        with torch.no_grad():
            chunked(model.embed_support, x.flatten(0, 1), no_pause)

    runs = [
        (
            timed(lambda: [adapt(model, sx, sy) for sx, sy in tasks])[0],
            timed(adapt, model, x, y)[0],
            timed(embedding)[0],
        )
        for _ in range(3)
    ]
    one, together, embedded = zip(*runs)
    return {
        "one_at_a_time_ms": statistics.median(one),
        "batched_ms": statistics.median(together),
        "embedding_ms": statistics.median(embedded),
        "embedding_flops_per_job": counted.get_total_flops() * x.shape[1],
    }


def ceiling(compute: dict, workers: int, jobs: int) -> float:
    """Jobs/s that `workers` cores could reach if they did nothing but the jobs' embedding, at the
    rate measured in process on one thread: no job batched or not can beat it on this CPU."""
    return workers * jobs / (compute["embedding_ms"] / 1000)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    bodies = omniglot_bodies(JOBS)
    arms = {"one at a time (JOB_BATCH_MAX=1)": {"job_batch_max": 1}, "batched (the default)": {}}
    stacks = {}
    for arm, env in arms.items():
        stacks[arm] = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-batching-")), **QUOTAS, **env)
        stacks[arm].env["WEB_CONCURRENCY"] = "2"
        stacks[arm].start(workers=args.workers)
    runs = {arm: [] for arm in arms}
    try:
        for s in stacks.values():  # warm: the first jobs pay for allocators and connections
            waiting_jobs_per_s(s, bodies[:8])
        for _ in tqdm(range(args.rounds), desc="rounds"):
            for arm, s in stacks.items():
                runs[arm].append(waiting_jobs_per_s(s, bodies))
    finally:
        for s in stacks.values():
            s.stop()
    compute = in_process(JOBS)
    res = {
        "workers": args.workers,
        "batch_max": Settings().job_batch_max,
        "runs": {arm: [{"jobs_per_s": r, "batch_sizes": b} for r, b in rs] for arm, rs in runs.items()},
        "in_process": compute,
    }
    med = {arm: statistics.median(r for r, _ in rs) for arm, rs in runs.items()}
    base, ours = med.values()
    most = res["ceiling_jobs_per_s"] = ceiling(compute, args.workers, JOBS)
    rate = compute["embedding_flops_per_job"] * JOBS / (compute["embedding_ms"] / 1000) / 1e9
    rows = [
        f"| {arm} | {', '.join(f'{r:.1f}' for r, _ in rs)} | **{med[arm]:.1f}** | "
        f"{statistics.median(statistics.mean(b) for _, b in rs):.1f} |"
        for arm, rs in runs.items()
    ]
    text = "\n".join([
        "# Batched adaptation", "",
        f"`python -m bench.batching --rounds {args.rounds} --workers {args.workers}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores: {JOBS} waiting 20-way 1-shot fast jobs (Omniglot PNGs, two tenants), "
        f"{args.workers} workers of 1 torch thread, 2 API processes; JOB_BATCH_MAX {res['batch_max']}.", "",
        "| workers | jobs/s, each round | median | mean batch size |",
        "| --- | --- | --- | --- |",
        *rows, "",
        f"Batched / one at a time: **{ours / base:.2f}x** (bar: 3x).", "",
        f"In process, one torch thread, the same kind of {JOBS} support sets: `adapt` one at a time "
        f"{compute['one_at_a_time_ms']:.0f} ms, as one batch {compute['batched_ms']:.0f} ms "
        f"({compute['one_at_a_time_ms'] / compute['batched_ms']:.2f}x): the embedding of 100 views per job "
        "(20 drawings and their shifts) is compute that batching cannot share on a CPU.", "",
        f"That embedding alone takes {compute['embedding_ms']:.0f} ms for the {JOBS} jobs "
        f"({compute['embedding_flops_per_job'] / 1e9:.2f} GFLOP a job, {rate:.0f} GFLOP/s on one thread). "
        f"{args.workers} cores doing nothing else would finish at most **{most:.1f} jobs/s**, "
        f"{most / base:.2f}x the one-at-a-time median: the most any way of running these jobs through this "
        f"pass, batched or not, can reach on this CPU, against the bar's {3 * base:.1f} jobs/s.", "",
        "![jobs/s](batching.png)", "",
    ])  # fmt: skip
    save("batching", text, res)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k, (arm, rs) in enumerate(runs.items()):
        ax.scatter([k] * len(rs), [r for r, _ in rs], alpha=0.6)
        ax.plot([k - 0.2, k + 0.2], [med[arm]] * 2, color="black")
    ax.set_xticks(range(len(runs)), [a.split(" (")[0] for a in runs], fontsize=8)
    ax.axhline(most, color="grey", linestyle="--", label="the cores' ceiling (embedding only)")
    ax.axhline(3 * base, color="red", linestyle=":", label="bar: 3x one at a time")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(0, None)
    ax.set_title(f"{JOBS} waiting 20-way 1-shot jobs, {args.workers} workers", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, RESULTS / "batching.png")
    print(text)


if __name__ == "__main__":
    main()
