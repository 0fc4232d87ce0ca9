"""One tenant's flood against another's latency: `python -m bench.flood [--runs 3]`.

Each run starts a stack of its own (2 API processes, 2 workers, one Redis, the quotas of
RAPID_ADAPT_* variables or the defaults; with any RAPID_ADAPT_* variable set, results go to
flood-<names>.md), or with --compose the Docker Compose deployment (bench/compose.py: a container
per service). globex's adaptation (20-way 1-shot Omniglot PNGs, POST ?wait=) and
prediction (20 PNGs) latencies are measured quiet, then while acme floods at full speed from
8 threads: jobs of 500 drawings (each with a new Idempotency-Key, as the project's client
sends them; --no-keys: without) and predictions of 500 drawings, as fast as the service
answers (its 429s included). Reports the medians, their ratios (bars: adaptation within 2x,
prediction within 3x), acme's answers by status, whether the workers lived, and where the
cores went. The baseline arm runs the same with background priority off
(RAPID_ADAPT_BACKGROUND_NICE=0), its runs interleaved with the default's. Writes
bench/results/flood.md, flood.json and flood.png."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import torch

from app.core.config import Settings
from app.demo import omniglot_task
from bench.compose import ComposeStack
from bench.stack import KEYS, METRICS_KEY, Stack, cpu_seconds
from models.research import omniglot

from .report import RESULTS, pyplot, save, save_figure
from .run import png_b64

ROUNDS = 25  # globex adaptations, each followed by 3 predictions, quiet and again under the flood (--rounds)


def at(record: dict, key: str) -> float:
    """A record's timestamp (created_at, started_at, finished_at) in ms."""
    return datetime.fromisoformat(record[key].replace("Z", "+00:00")).timestamp() * 1000


def adapted(c: httpx.Client, body: dict) -> dict:
    """An adaptation posted with ?wait= and followed until it succeeded -> its record."""
    a = c.post("/v1/adaptations?wait=30", json=body).json()
    while a.get("status") in ("queued", "running"):  # still in line after 30 s (a baseline without slices)
        a = c.get(f"/v1/adaptations/{a['id']}?wait=30").json()
    assert a.get("status") == "succeeded", str(a)[:300]
    return a


def measure(url: str, adapt_body: dict, queries: dict, n: int = ROUNDS) -> tuple[list[float], ...]:
    """-> globex's adaptation latencies, prediction latencies, each adaptation's wait in line (its
    record's started_at - created_at) and its run (finished_at - started_at), in ms."""
    adapt_ms, predict_ms, queued_ms, running_ms = [], [], [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['globex']}"}, timeout=120) as c:
        aid = c.post("/v1/adaptations?wait=30", json=adapt_body).json()["id"]
        for _ in range(n):
            t = time.perf_counter()
            a = adapted(c, adapt_body)
            adapt_ms.append((time.perf_counter() - t) * 1000)
            queued_ms.append(at(a, "started_at") - at(a, "created_at"))
            running_ms.append(at(a, "finished_at") - at(a, "started_at"))
            for _ in range(3):
                t = time.perf_counter()
                r = c.post(f"/v1/adaptations/{aid}/predictions", json=queries)
                predict_ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text[:200]
    return adapt_ms, predict_ms, queued_ms, running_ms


def snapshot(url: str, queries: dict, before: dict | None = None) -> dict:
    """Each tenant's stored adaptations (those of `before`, or all), their statuses, and the
    predictions of the oldest: what the flood must leave as it was."""
    out = {}
    for tenant in ("acme", "globex"):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=120) as c:
            if before:
                ids = before[tenant]["ids"]
            else:
                ids = [a["id"] for a in c.get("/v1/adaptations?limit=100").json()["data"]]
            statuses = [c.get(f"/v1/adaptations/{aid}").json().get("status") for aid in ids]
            for _ in range(10):  # right after its flood, a tenant may still be over its rate of images
                answers = c.post(f"/v1/adaptations/{ids[-1]}/predictions", json=queries)
                if answers.status_code != 429:
                    break
                time.sleep(1)
            answers = answers.json()
            out[tenant] = {"ids": ids, "statuses": statuses, "predictions": answers}
    return out


def flood(
    url: str, aid: str, stop: threading.Event, big_job: dict, big_query: dict, seen: Counter, lock, keyed: bool
) -> None:
    """acme at full speed: 500-drawing jobs, and 500-drawing predictions against its adaptation `aid`."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=120) as c:
        while not stop.is_set():
            key = {"Idempotency-Key": f"flood-{uuid.uuid4()}"} if keyed else {}
            for r in (
                c.post("/v1/adaptations", json=big_job, headers=key),
                c.post(f"/v1/adaptations/{aid}/predictions", json=big_query),
            ):
                with lock:
                    seen[r.status_code] += 1


def passes(url: str) -> dict[str, int]:
    """The API's prediction passes so far by torch threads (app/core/idle.py: wide while the cores are free)."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    found = re.findall(r'^rapid_adapt_predict_passes_total\{threads="(\d+)"\} ([0-9.e+]+)$', text, re.M)
    return {threads: int(float(n)) for threads, n in found}


def run_once(
    env: dict[str, str], bodies: tuple, workers: int = 2, rounds: int = ROUNDS, keyed: bool = True, compose=False
) -> dict:
    """One stack (processes here, or `compose`: the Compose deployment's containers) with `env` on top
    of the environment: globex quiet, then under acme's flood."""
    adapt_body, query_body, big_job, big_query = bodies
    stack = ComposeStack() if compose else Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-flood-")))
    stack.env |= {"WEB_CONCURRENCY": "2", **env}
    stack.start(workers=workers)
    try:
        quiet = measure(stack.url, adapt_body, query_body, rounds)
        acme_first = httpx.post(
            stack.url + "/v1/adaptations?wait=30", json=adapt_body, headers={"Authorization": f"Bearer {KEYS['acme']}"}
        )
        assert acme_first.status_code == 200, acme_first.text[:200]
        acme_aid = acme_first.json()["id"]
        before = snapshot(stack.url, query_body)
        stop, seen, lock = threading.Event(), Counter(), threading.Lock()
        threads = [
            threading.Thread(target=flood, args=(stack.url, acme_aid, stop, big_job, big_query, seen, lock, keyed))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(10)  # the flood at full speed first
        roots = stack.roots() | {"clients (this process)": os.getpid()}
        cpu0, t0, passes0 = cpu_seconds(roots), time.monotonic(), passes(stack.url)
        flooded = measure(stack.url, adapt_body, query_body, rounds)
        cpu1, wall, passes1 = cpu_seconds(roots), time.monotonic() - t0, passes(stack.url)
        stop.set()
        for t in threads:
            t.join()
        workers_alive = stack.workers_alive()
        after = snapshot(stack.url, query_body, before)
        kept = before == after and all(x == "succeeded" for t in before for x in before[t]["statuses"])
    finally:
        stack.stop()
    med = statistics.median
    res = {
        "adaptation_p50_quiet_ms": med(quiet[0]),
        "adaptation_p50_flooded_ms": med(flooded[0]),
        "prediction_p50_quiet_ms": med(quiet[1]),
        "prediction_p50_flooded_ms": med(flooded[1]),
        "adaptation_queued_p50_quiet_ms": med(quiet[2]),
        "adaptation_queued_p50_flooded_ms": med(flooded[2]),
        "adaptation_running_p50_quiet_ms": med(quiet[3]),
        "adaptation_running_p50_flooded_ms": med(flooded[3]),
        "acme_answers": dict(sorted(seen.items())),
        "workers_alive": workers_alive,
        "stored_kept": kept,
        "stored_before": {t: len(v["ids"]) for t, v in before.items()},
        "cores_used_while_measured": {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in roots},
        "passes_while_measured_by_threads": {k: passes1[k] - passes0.get(k, 0) for k in passes1},
    }
    res["adaptation_ratio"] = res["adaptation_p50_flooded_ms"] / res["adaptation_p50_quiet_ms"]
    res["prediction_ratio"] = res["prediction_p50_flooded_ms"] / res["prediction_p50_quiet_ms"]
    return res


def bodies() -> tuple[dict, dict, dict, dict]:
    """globex's adaptation and prediction bodies, acme's 500-drawing job and prediction."""
    ds = omniglot.load()
    support, queries, _ = omniglot_task(seed=1, n_way=20, n_query=1)
    sampler = omniglot.EpisodeSampler(ds, "train")
    ids, _ = sampler.sample_ids(20, 20, 0, torch.Generator().manual_seed(0))  # 400 drawings
    pngs = [png_b64(ds, i) for i, _, _ in ids] + [png_b64(ds, i) for i, _, _ in ids[:100]]
    big_job = {
        "model": "omniglot-conv4",
        "support": [{"input": p, "label": k % 20} for k, p in enumerate(pngs)],
        "mode": "fine-tune",
    }
    adapt_body = {"model": "omniglot-conv4", "support": support, "mode": "fast"}
    return adapt_body, {"inputs": queries}, big_job, {"inputs": pngs}


DEFAULT = "the defaults (a worker reserved while another tenant is active, jobs yield, background priority)"
BASELINES = {  # --baseline: the arm measured beside the defaults
    "priority": ("baseline: background priority off", {"RAPID_ADAPT_BACKGROUND_NICE": "0"}),
    "slices": ("baseline: jobs never yield", {"RAPID_ADAPT_JOB_SLICE_SECONDS": "0"}),
    "sessions": (  # bench/stack.py: STACK_SESSIONS
        "baseline: each process in a session of its own, slices of 0.05 s (as scripts/quickstart.sh ran them before)",
        {"STACK_SESSIONS": "own", "RAPID_ADAPT_JOB_SLICE_SECONDS": "0.05"},
    ),
    "narrow": ("baseline: every prediction pass on one thread", {"RAPID_ADAPT_PREDICT_IDLE_THREADS": "1"}),
    "reserved": (
        "baseline: before issue 31 (a hard reservation, jobs never yield nor batch)",
        {
            "RAPID_ADAPT_JOB_SLICE_SECONDS": "0",
            "RAPID_ADAPT_TENANT_RESERVED_WORKERS": "1",
            "RAPID_ADAPT_TENANT_ACTIVE_SECONDS": "0",
            "RAPID_ADAPT_JOB_BATCH_MAX": "1",
        },
    ),
}


def report(
    runs: dict[str, list[dict]], quotas: dict, workers: int, baseline: str, rounds: int, keyed: bool, compose=False
) -> str:
    med = statistics.median
    rows = []
    for arm, rs in runs.items():
        for i, r in enumerate(rs, 1):
            rows.append(
                f"| {arm} | {i} | {r['adaptation_p50_quiet_ms']:.0f} | {r['adaptation_p50_flooded_ms']:.0f} | "
                f"{r['adaptation_ratio']:.2f} | {r['adaptation_queued_p50_quiet_ms']:.0f} / "
                f"{r['adaptation_queued_p50_flooded_ms']:.0f} | {r['prediction_p50_quiet_ms']:.1f} | "
                f"{r['prediction_p50_flooded_ms']:.1f} | {r['prediction_ratio']:.2f} | {r['acme_answers']} | "
                f"{r['workers_alive']} | {r['stored_kept']} |"
            )
        rows.append(
            f"| **{arm}: median of runs** | | | | **{med(r['adaptation_ratio'] for r in rs):.2f}** | | | | "
            f"**{med(r['prediction_ratio'] for r in rs):.2f}** | | | |"
        )
    cores = [
        f"- {arm}, run {i}: "
        + ", ".join(f"{k} {v}" for k, v in r["cores_used_while_measured"].items())
        + "; prediction passes by torch threads "
        + ", ".join(f"{k}: {v}" for k, v in sorted(r.get("passes_while_measured_by_threads", {}).items()))
        for arm, rs in runs.items()
        for i, r in enumerate(rs, 1)
    ]
    return "\n".join([
        "# Flood", "",
        f"`python -m bench.flood --runs {len(next(iter(runs.values())))} --workers {workers} --baseline {baseline} "
        f"--rounds {rounds}{'' if keyed else ' --no-keys'}{' --compose' if compose else ''}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: each run "
        f"{'a Compose deployment (bench/compose.py: a container per service)' if compose else 'a stack'} of its own "
        f"with 2 API processes and {workers} worker(s), "
        f"quotas {quotas}; "
        f"acme floods from 8 threads with 500-drawing fine-tune jobs ({'each with a new' if keyed else 'without'} "
        f"Idempotency-Key) and 500-drawing predictions while globex's "
        f"medians are measured ({rounds} adaptations, {3 * rounds} predictions, quiet and then flooded). "
        f"Bars: adaptation within 2x of quiet, prediction within 3x. The baseline arm ({baseline}) sets "
        f"{BASELINES[baseline][1]}; the arms' runs are interleaved.", "",
        "| arm | run | adaptation quiet ms | flooded ms | ratio | in line, quiet / flooded ms | prediction quiet ms "
        "| flooded ms | ratio | acme's answers | workers alive | stored kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows, "",
        "Cores in use while globex was measured under the flood (a process and its children):", "",
        *cores, "",
        f"![globex's medians, quiet and flooded]({name(workers, baseline, keyed=keyed, compose=compose)}.png)", "",
    ])  # fmt: skip


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, what, bar in zip(axes, ("adaptation", "prediction"), (2, 3)):
        for k, rs in enumerate(runs.values()):
            ratios = [r[f"{what}_ratio"] for r in rs]
            ax.scatter([k] * len(ratios), ratios, alpha=0.6)
            ax.plot([k - 0.2, k + 0.2], [statistics.median(ratios)] * 2, color="black")
        ax.axhline(bar, color="red", linestyle="--", label=f"bar: {bar}x")
        ax.set_xticks(range(len(runs)), [a.split(" (")[0].replace("baseline: ", "") for a in runs], fontsize=8)
        ax.set_xlim(-0.5, len(runs) - 0.5)
        ax.set_ylim(0, None)
        ax.set_title(f"globex's {what} p50, flooded / quiet", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each arm, interleaved")
    p.add_argument("--workers", type=int, default=2, help="Celery workers of the stack")
    p.add_argument("--baseline", choices=BASELINES, default="priority", help="the arm beside the defaults")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="globex's adaptations, quiet and flooded")
    p.add_argument("--no-keys", action="store_true", help="acme's creates without an Idempotency-Key")
    p.add_argument("--compose", action="store_true", help="the Compose deployment (bench/compose.py), not processes")
    args = p.parse_args(argv)
    quotas = {k: v for k, v in Settings().model_dump().items() if k.startswith("tenant_")}  # RAPID_ADAPT_* apply
    changed = sorted(k for k in os.environ if k.startswith("RAPID_ADAPT_"))  # results of other settings: elsewhere
    keyed = not args.no_keys
    out = name(args.workers, args.baseline, changed, keyed, args.compose)
    arms = dict([(DEFAULT, {}), BASELINES[args.baseline]])
    arms = {a: env for a, env in arms.items() if not set(env) & set(changed)}  # a variable set by hand holds
    data, runs = bodies(), {arm: [] for arm in arms}
    for i in range(args.runs):
        for arm, env in arms.items():
            print(f"run {i + 1}/{args.runs}: {arm} ...", flush=True)
            r = run_once(env, data, args.workers, args.rounds, keyed, args.compose)
            runs[arm].append(r)
            print(f"  adaptation {r['adaptation_ratio']:.2f}x, prediction {r['prediction_ratio']:.2f}x", flush=True)
    text = report(runs, quotas, args.workers, args.baseline, args.rounds, keyed, args.compose)
    save(out, text, {"runs": runs, "quotas": quotas, "keyed": keyed, "compose": args.compose})
    plot(runs, RESULTS / f"{out}.png")


def name(workers: int, baseline: str, changed: list[str] = (), keyed: bool = True, compose: bool = False) -> str:
    """flood (2 workers, background priority as the baseline, keyed creates), else flood-<what differs>."""
    parts = ["compose"] * compose + [f"{workers}-workers"] * (workers != 2) + [baseline] * (baseline != "priority")
    parts += ["no-keys"] * (not keyed)
    parts += [k.removeprefix("RAPID_ADAPT_").lower() for k in changed]
    return "-".join(["flood", *parts])


if __name__ == "__main__":
    main()
