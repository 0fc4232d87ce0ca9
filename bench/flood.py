"""One tenant's flood against another's latency: `python -m bench.flood`.

A stack of its own (2 API processes, 2 workers, one Redis, the quotas of RAPID_ADAPT_*
variables or the defaults; with any RAPID_ADAPT_* variable set, results go to flood-<names>.md). globex's
adaptation (20-way 1-shot Omniglot PNGs, POST ?wait=) and prediction (20 PNGs) latencies are
measured quiet, then while acme floods at full speed from 8 threads: jobs of 500 drawings and
predictions of 500 drawings, as fast as the service answers (its 429s included). Reports the
medians, their ratios (bars: adaptation within 2x, prediction within 3x), acme's answers by
status, and whether the workers lived. Writes bench/results/flood.md and flood.json."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from app.core.config import Settings
from app.demo import omniglot_task
from models.research import omniglot
from tests.stack import KEYS, Stack

from .report import save
from .run import png_b64

ROUNDS = 25  # globex adaptations, each followed by 3 predictions, quiet and again under the flood


def measure(url: str, adapt_body: dict, queries: dict, n: int) -> tuple[list[float], list[float]]:
    adapt_ms, predict_ms = [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['globex']}"}, timeout=120) as c:
        aid = c.post("/v1/adaptations?wait=30", json=adapt_body).json()["id"]
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/v1/adaptations?wait=30", json=adapt_body)
            adapt_ms.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:200]
            for _ in range(3):
                t = time.perf_counter()
                r = c.post(f"/v1/adaptations/{aid}/predictions", json=queries)
                predict_ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text[:200]
    return adapt_ms, predict_ms


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
            answers = c.post(f"/v1/adaptations/{ids[-1]}/predictions", json=queries).json()
            out[tenant] = {"ids": ids, "statuses": statuses, "predictions": answers}
    return out


def cpu_seconds(sessions: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process of each named session (the
    stack starts each program in a session of its own), from /proc: where the cores went."""
    tick, out = os.sysconf("SC_CLK_TCK"), dict.fromkeys(sessions, 0.0)
    by_sid = {sid: name for name, sid in sessions.items()}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        name = by_sid.get(int(fields[3]))  # fields after the command: state ppid pgrp session ...
        if name:
            out[name] += (int(fields[11]) + int(fields[12])) / tick
    return out


def flood(url: str, aid: str, stop: threading.Event, big_job: dict, big_query: dict, seen: Counter, lock) -> None:
    """acme at full speed: 500-drawing jobs, and 500-drawing predictions against its adaptation `aid`."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=120) as c:
        while not stop.is_set():
            for r in (
                c.post("/v1/adaptations", json=big_job),
                c.post(f"/v1/adaptations/{aid}/predictions", json=big_query),
            ):
                with lock:
                    seen[r.status_code] += 1


def main() -> None:
    quotas = {k: v for k, v in Settings().model_dump().items() if k.startswith("tenant_")}  # RAPID_ADAPT_* apply
    changed = sorted(k for k in os.environ if k.startswith("RAPID_ADAPT_"))  # results of other settings: elsewhere
    name = "flood" if not changed else "flood-" + "-".join(k.removeprefix("RAPID_ADAPT_").lower() for k in changed)
    ds = omniglot.load()
    support, queries, _ = omniglot_task(seed=1, n_way=20, n_query=1)
    adapt_body = {"model": "omniglot-conv4", "support": support, "mode": "fast"}
    query_body = {"inputs": queries}
    sampler = omniglot.EpisodeSampler(ds, "train")
    ids, _ = sampler.sample_ids(20, 20, 0, torch.Generator().manual_seed(0))  # 400 drawings
    pngs = [png_b64(ds, i) for i, _, _ in ids] + [png_b64(ds, i) for i, _, _ in ids[:100]]
    big_job = {
        "model": "omniglot-conv4",
        "support": [{"input": p, "label": k % 20} for k, p in enumerate(pngs)],
        "mode": "fine-tune",
    }
    big_query = {"inputs": pngs}
    stack = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-flood-")))
    stack.env["WEB_CONCURRENCY"] = "2"
    stack.start(workers=2)
    try:
        quiet = measure(stack.url, adapt_body, query_body, ROUNDS)
        acme_first = httpx.post(
            stack.url + "/v1/adaptations?wait=30", json=adapt_body, headers={"Authorization": f"Bearer {KEYS['acme']}"}
        )
        assert acme_first.status_code == 200, acme_first.text[:200]
        acme_aid = acme_first.json()["id"]
        before = snapshot(stack.url, query_body)
        stop, seen, lock = threading.Event(), Counter(), threading.Lock()
        threads = [
            threading.Thread(target=flood, args=(stack.url, acme_aid, stop, big_job, big_query, seen, lock))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(10)  # the flood at full speed first
        sessions = {"api": stack.api.pid, "redis": stack.redis.pid, "clients (this process)": os.getsid(0)}
        sessions |= {f"worker {i}": w.pid for i, w in enumerate(stack.workers)}
        cpu0, t0 = cpu_seconds(sessions), time.monotonic()
        flooded = measure(stack.url, adapt_body, query_body, ROUNDS)
        cpu1, wall = cpu_seconds(sessions), time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join()
        workers_alive = all(w.poll() is None for w in stack.workers)
        after = snapshot(stack.url, query_body, before)
        kept = before == after and all(x == "succeeded" for t in before for x in before[t]["statuses"])
    finally:
        stack.stop()
    med = lambda v: statistics.median(v)
    res = {
        "adaptation_p50_quiet_ms": med(quiet[0]),
        "adaptation_p50_flooded_ms": med(flooded[0]),
        "prediction_p50_quiet_ms": med(quiet[1]),
        "prediction_p50_flooded_ms": med(flooded[1]),
        "acme_answers": dict(seen),
        "workers_alive": workers_alive,
        "stored_kept": kept,
        "stored_before": {t: len(v["ids"]) for t, v in before.items()},
        "cores_used_while_measured": {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in sessions},
    }
    res["adaptation_ratio"] = res["adaptation_p50_flooded_ms"] / res["adaptation_p50_quiet_ms"]
    res["prediction_ratio"] = res["prediction_p50_flooded_ms"] / res["prediction_p50_quiet_ms"]
    text = "\n".join([
        "# Flood", "",
        f"`python -m bench.flood` on {time.strftime('%Y-%m-%d')}: 2 API processes, 2 workers, quotas {quotas}; "
        "acme floods from 8 threads with 500-drawing fine-tune jobs and 500-drawing predictions.", "",
        "| globex's median | quiet | acme flooding | ratio | bar |",
        "| --- | --- | --- | --- | --- |",
        f"| adaptation, 20-way 1-shot PNGs, POST ?wait= | {res['adaptation_p50_quiet_ms']:.0f} ms | "
        f"{res['adaptation_p50_flooded_ms']:.0f} ms | {res['adaptation_ratio']:.2f} | 2 |",
        f"| prediction, 20 PNGs | {res['prediction_p50_quiet_ms']:.1f} ms | "
        f"{res['prediction_p50_flooded_ms']:.1f} ms | {res['prediction_ratio']:.2f} | 3 |",
        "",
        f"acme's answers by status: {dict(sorted(seen.items()))}; workers alive at the end: {workers_alive}; "
        f"every adaptation stored before the flood ({res['stored_before']}) still there with the same answers: "
        f"{kept}.",
        "",
        f"Cores in use while globex was measured under the flood (of {os.cpu_count()}): "
        + ", ".join(f"{k} {v}" for k, v in res["cores_used_while_measured"].items()) + ".",
        "",
    ])  # fmt: skip
    save(name, text, res | {"quotas": quotas})


if __name__ == "__main__":
    main()
