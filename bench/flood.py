"""One tenant's flood against another's latency: `python -m bench.flood`.

A stack of its own (2 API processes, 2 workers, one Redis, the default quotas). globex's
adaptation (20-way 1-shot Omniglot PNGs, POST ?wait=) and prediction (20 PNGs) latencies are
measured quiet, then while acme floods at full speed from 8 threads: jobs of 500 drawings and
predictions of 500 drawings, as fast as the service answers (its 429s included). Reports the
medians, their ratios (bars: adaptation within 2x, prediction within 3x), acme's answers by
status, and whether the workers lived. Writes bench/results/flood.md and flood.json."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from app.demo import omniglot_task
from models.research import omniglot
from tests.stack import KEYS, Stack

from .report import save
from .run import png_b64


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


def flood(url: str, stop: threading.Event, big_job: dict, big_query: dict, seen: Counter, lock) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=120) as c:
        aid = c.post("/v1/adaptations?wait=60", json={"model": "omniglot-conv4", "support": big_job["support"][:20]})
        aid = aid.json()["id"]
        while not stop.is_set():
            for r in (
                c.post("/v1/adaptations", json=big_job),
                c.post(f"/v1/adaptations/{aid}/predictions", json=big_query),
            ):
                with lock:
                    seen[r.status_code] += 1


def main() -> None:
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
        quiet = measure(stack.url, adapt_body, query_body, 15)
        stop, seen, lock = threading.Event(), Counter(), threading.Lock()
        threads = [
            threading.Thread(target=flood, args=(stack.url, stop, big_job, big_query, seen, lock)) for _ in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(10)  # the flood at full speed first
        flooded = measure(stack.url, adapt_body, query_body, 15)
        stop.set()
        for t in threads:
            t.join()
        workers_alive = all(w.poll() is None for w in stack.workers)
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
    }
    res["adaptation_ratio"] = res["adaptation_p50_flooded_ms"] / res["adaptation_p50_quiet_ms"]
    res["prediction_ratio"] = res["prediction_p50_flooded_ms"] / res["prediction_p50_quiet_ms"]
    text = "\n".join([
        "# Flood", "",
        f"`python -m bench.flood` on {time.strftime('%Y-%m-%d')}: 2 API processes, 2 workers, default quotas; "
        "acme floods from 8 threads with 500-drawing fine-tune jobs and 500-drawing predictions.", "",
        "| globex's median | quiet | acme flooding | ratio | bar |",
        "| --- | --- | --- | --- | --- |",
        f"| adaptation, 20-way 1-shot PNGs, POST ?wait= | {res['adaptation_p50_quiet_ms']:.0f} ms | "
        f"{res['adaptation_p50_flooded_ms']:.0f} ms | {res['adaptation_ratio']:.2f} | 2 |",
        f"| prediction, 20 PNGs | {res['prediction_p50_quiet_ms']:.1f} ms | "
        f"{res['prediction_p50_flooded_ms']:.1f} ms | {res['prediction_ratio']:.2f} | 3 |",
        "",
        f"acme's answers by status: {dict(sorted(seen.items()))}; workers alive at the end: {workers_alive}.",
        "",
    ])  # fmt: skip
    save("flood", text, res)


if __name__ == "__main__":
    main()
