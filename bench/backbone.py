"""Backbone bases against the native base: `python -m bench.backbone [--reps 200] [--rounds 6]`.

A. The forward pass: omniglot-conv4's embedding in eager PyTorch (`embed_inference`, the
   native base's serving path) against the same embedding exported with `torch.export`
   (`python -m models.export base omniglot-conv4`), in this process with 2 threads; images/s at
   batches of 20 and 64, medians of `reps`.
B. Served: one stack serving both; a fast adaptation on each (the same 20 drawings), then
   rounds alternating between them of 8 threads posting 20-image predictions for a second;
   images/s per base, medians over rounds.
Writes bench/results/backbone.md and backbone.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

from app.demo import omniglot_task
from bench.report import save
from bench.stack import KEYS, Stack
from models import registry, runtime
from models.export import export_base


def forward_rates(reps: int, out: Path) -> dict:
    native, _ = registry.shipped().load("omniglot-conv4")
    backbone, _ = registry.Registry([out]).load("omniglot-conv4-backbone")
    rates = {}
    for n in (20, 64):
        x = torch.rand(n, *native.input_shape)
        times: dict[str, list[float]] = {"eager": [], "exported": []}
        with torch.no_grad():
            for _ in range(reps):  # interleaved: the machine's drift falls on both
                for name, f in (("eager", native.embed_inference), ("exported", backbone.embed)):
                    t = time.perf_counter()
                    f(x)
                    times[name].append(time.perf_counter() - t)
        rates |= {f"{name}_{n}": n / statistics.median(ts) for name, ts in times.items()}
    return rates


def served_rates(out: Path, rounds: int) -> dict:
    published = Path(tempfile.mkdtemp(prefix="rapid-adapt-backbones-"))
    for f in out.glob("omniglot-conv4-backbone.*"):
        (published / f.name).write_bytes(f.read_bytes())
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-bench-bb-")), models_dir=f"shipped:{published}")
    s.env["RAPID_ADAPT_TENANT_PREDICT_IMAGES_PER_SECOND"] = str(10**9)
    support, queries, _ = omniglot_task(seed=1, n_way=20, n_query=1)
    per: dict[str, list[float]] = {"omniglot-conv4": [], "omniglot-conv4-backbone": []}
    try:
        s.start()
        headers = {"Authorization": f"Bearer {KEYS['acme']}"}
        with httpx.Client(base_url=s.url, headers=headers, timeout=60) as c:
            ids = {}
            for model in per:
                made = c.post("/v1/adaptations?wait=30", json={"model": model, "support": support, "mode": "fast"})
                ids[model] = made.json()["id"]
                c.post(f"/v1/adaptations/{ids[model]}/predictions", json={"inputs": queries})  # warm
        for r in tqdm(range(rounds), desc="B. served, rounds"):
            for model in per if r % 2 == 0 else reversed(list(per)):
                per[model].append(load(s.url, headers, ids[model], queries, seconds=1.0))
    finally:
        s.stop()
    return {m: statistics.median(v) for m, v in per.items()}


def load(url: str, headers: dict, aid: str, queries: list, seconds: float, threads: int = 8) -> float:
    """Images/s of 20-image predictions from `threads` clients for `seconds`."""
    done, stop = [0], time.perf_counter() + seconds

    def client():
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while time.perf_counter() < stop:
                r = c.post(f"/v1/adaptations/{aid}/predictions", json={"inputs": queries})
                assert r.status_code == 200, r.text
                done[0] += len(queries)

    started = time.perf_counter()
    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done[0] / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    runtime.configure(2)
    out = Path(tempfile.mkdtemp(prefix="rapid-adapt-export-"))
    export_base("omniglot-conv4", out)
    forward = forward_rates(args.reps, out)
    served = served_rates(out, args.rounds)
    lines = [
        "# Backbone bases: the exported program against the native base",
        "",
        f"`python -m bench.backbone --reps {args.reps} --rounds {args.rounds}`: omniglot-conv4's embedding, eager and "
        "exported with torch.export (`python -m models.export base omniglot-conv4`).",
        "",
        "| forward pass (2 threads) | eager | exported | exported / eager |",
        "| --- | --- | --- | --- |",
    ]
    for n in (20, 64):
        e, x = forward[f"eager_{n}"], forward[f"exported_{n}"]
        lines.append(f"| batch {n} | {e:,.0f} images/s | {x:,.0f} images/s | {x / e:.2f}x |")
    native, backbone = served["omniglot-conv4"], served["omniglot-conv4-backbone"]
    lines += [
        "",
        "| served (20-image predictions, 8 clients, one API process) | images/s | vs native |",
        "| --- | --- | --- |",
        f"| omniglot-conv4 (native) | {native:,.0f} | 1.00x |",
        f"| omniglot-conv4-backbone (exported) | {backbone:,.0f} | {backbone / native:.2f}x |",
        "",
        "Bars (issue 33): the exported forward pass no slower than eager; served images/s at least 0.9x the native.",
    ]
    save("backbone", "\n".join(lines) + "\n", {"forward": forward, "served": served})


if __name__ == "__main__":
    main()
