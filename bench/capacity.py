"""The capacity model's inputs, measured here: `python -m bench.capacity`.

- Adaptations/s of one worker process, and of two, by kind of job: a 5-point sinusoid
  (10 steps), Omniglot 20-way 1-shot PNGs (the default request: the fast loop), and
  Omniglot 10-way 5-shot PNGs in `fine-tune` mode. 40 jobs of two tenants created at once;
  the rate is jobs over the time from the first create to the last end.
- Prediction images/s of one API process, and of two (WEB_CONCURRENCY=2): wrk on one warm
  adaptation, 20-image PNG requests, 8 connections, for `--seconds`.
- The scheduler's claim rate on one Redis core: jobs of T tenants (1, 10, 100, 1000) in line
  in a Redis of its own, claimed one by one; the Redis CPU time per claim (INFO's used_cpu
  before and after) gives the claims one Redis core serves each second, the client's own
  overhead left out.

Redis commands and bytes per adaptation come from `python -m bench.commands`. docs/scaling.md
turns these into replicas and shards. Writes bench/results/capacity.md and capacity.json."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
import torch
from tqdm import tqdm

from app.core import keys
from app.core.jobs.scheduler import Scheduler
from app.demo import sinusoid_task
from bench.stack import KEYS, Stack, wait_until
from models.research import omniglot

from .load import run_wrk
from .report import RESULTS, pyplot, save, save_figure
from .run import png_b64

AUTH = [{"Authorization": f"Bearer {KEYS[t]}"} for t in ("acme", "globex")]


def bodies(kind: str, n: int) -> list[dict]:
    if kind == "sinusoid":
        return [{"model": "sinusoid-mlp", "support": sinusoid_task(i)[0]} for i in range(n)]
    ds = omniglot.load()
    sampler = omniglot.EpisodeSampler(ds, "test")
    gen = torch.Generator().manual_seed(3)
    way, shot, mode = (20, 1, "auto") if kind == "omniglot-20w1s" else (10, 5, "fine-tune")
    out = []
    for _ in range(min(n, 10)):
        support, _ = sampler.sample_ids(way, shot, 0, gen)
        examples = [{"input": png_b64(ds, i), "label": y} for i, _, y in support]
        out.append({"model": "omniglot-conv4", "mode": mode, "support": examples})
    return [out[i % len(out)] for i in range(n)]


def status(c: httpx.Client, aid: str, auth: dict) -> str:
    return c.get(f"/v1/adaptations/{aid}?wait=10", headers=auth).json()["status"]


def jobs_per_second(url: str, work: list[dict]) -> float:
    """All jobs created at once (two tenants, alternating), then waited for."""
    with httpx.Client(base_url=url, timeout=60) as c:
        create = lambda i: c.post("/v1/adaptations", json=work[i], headers=AUTH[i % 2]).json()["id"]  # noqa: E731
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(len(work))))
        for i, aid in enumerate(ids):
            while status(c, aid, AUTH[i % 2]) in ("queued", "running"):
                pass
        return len(work) / (time.perf_counter() - started)


def workers(jobs: int) -> dict:
    out = {}
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-capacity-w-")), worker_heartbeat_seconds=2.0)
    try:
        s.start()
        for n in (1, 2):
            while len(s.workers) < n:
                s.start_worker()
                wait_until(lambda n=n: httpx.get(s.url + "/readyz").json()["workers"] >= n, 60, "the workers")
            for kind in ("sinusoid", "omniglot-20w1s", "omniglot-10w5s-fine-tune"):
                work = bodies(kind, jobs)
                jobs_per_second(s.url, work[:4])  # warm
                out[f"{kind}/{n}"] = jobs_per_second(s.url, work)
                print(f"  {n} worker(s), {kind}: {out[f'{kind}/{n}']:.1f} jobs/s", flush=True)
    finally:
        s.stop()
    return out


def creates(seconds: float) -> dict:
    """Creates/s one API process answers with no worker taking the jobs (8 client threads): what
    the API costs per adaptation, apart from the workers'."""
    out = {}
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-capacity-a-")), tenant_max_jobs=10**6)
    try:
        s.start_redis()
        s.start_api()
        for kind in ("sinusoid", "omniglot-20w1s"):
            work = bodies(kind, 10)
            with httpx.Client(base_url=s.url, timeout=60) as c:
                post = lambda i, c=c, work=work: (
                    c.post(  # noqa: E731
                        "/v1/adaptations", json=work[i % 10], headers=AUTH[i % 2]
                    ).status_code
                )
                list(map(post, range(10)))  # warm
                n, started = 0, time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    while time.perf_counter() - started < seconds:
                        assert set(pool.map(post, range(n, n + 40))) == {202}
                        n += 40
                out[kind] = n / (time.perf_counter() - started)
            print(f"  creates, {kind}: {out[kind]:.0f}/s", flush=True)
    finally:
        s.stop()
    return out


def predictions(seconds: float) -> dict:
    out = {}
    ds = omniglot.load()
    sampler = omniglot.EpisodeSampler(ds, "test")
    support, query = sampler.sample_ids(20, 1, 1, torch.Generator().manual_seed(2))
    body = {"model": "omniglot-conv4", "support": [{"input": png_b64(ds, i), "label": y} for i, _, y in support]}
    q20 = json.dumps({"inputs": [png_b64(ds, i) for i, _, _ in query]})
    for n in (1, 2):
        tmp = Path(tempfile.mkdtemp(prefix="rapid-adapt-capacity-p-"))
        s = Stack(tmp, worker_heartbeat_seconds=2.0, tenant_predict_images_per_second=10**7)  # no rate limit
        s.env["WEB_CONCURRENCY"] = str(n)
        try:
            s.start()
            with httpx.Client(base_url=s.url, headers=AUTH[0], timeout=60) as c:
                aid = c.post("/v1/adaptations?wait=10", json=body).json()["id"]
                for _ in range(20):  # warm
                    c.post(f"/v1/adaptations/{aid}/predictions", json=json.loads(q20))
            r = run_wrk(s.url, KEYS["acme"], [aid], q20, seconds, 8)
            out[f"api/{n}"] = {"images_per_s": 20 * r["requests"] / r["seconds"], "errors": r["errors"]}
            out[f"api/{n}"]["p50_ms"] = r["p50"]
            print(f"  {n} API process(es): {out[f'api/{n}']['images_per_s']:.0f} images/s", flush=True)
        finally:
            s.stop()
    return out


def claims(total: int = 2000) -> dict:
    """Redis CPU per claim with T tenants in the rotation: `total` jobs spread over them round
    robin (with 1,000 tenants, 2 each), claimed one by one. Two measures: the claim script's
    own time (commandstats), and the Redis process's CPU (used_cpu, with the network)."""
    out = {}
    s = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-capacity-c-")))
    try:
        s.start_redis()
        r = redis.Redis(port=s.redis_port, db=1)
        for tenants in tqdm((1, 10, 100, 1000), desc="claims"):
            r.flushdb()
            sched = Scheduler(r)
            names = [f"t{i}" for i in range(tenants)]
            p = r.pipeline(transaction=False)
            for i in range(total):
                t = names[i % tenants]
                p.rpush(keys.pending(t), f"ad_{i:032x}")
            p.rpush(keys.ROTATION, *names)
            p.execute()
            cpu = lambda: sum(float(v) for k, v in r.info("cpu").items() if k in ("used_cpu_user", "used_cpu_sys"))  # noqa: E731
            r.config_resetstat()
            n, before, wall = 0, cpu(), time.perf_counter()
            while n < total and sched.claim("w", max_running=10**9)[0]:
                n += 1
            cpu_s, wall = cpu() - before, time.perf_counter() - wall
            script = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
            out[str(tenants)] = {"claims": n, "redis_cpu_us_per_claim": 1e6 * cpu_s / n, "script_us": script}
            out[str(tenants)]["client_claims_per_s"] = n / wall
    finally:
        s.stop()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--seconds", type=float, default=10)
    parts = {"claims": claims, "workers": workers, "predictions": predictions, "creates": creates}
    p.add_argument("--only", nargs="*", choices=sorted(parts), default=sorted(parts), help="the rest from the last run")
    args = p.parse_args(argv)
    last = RESULTS / "capacity.json"
    got = json.loads(last.read_text()) if last.exists() else {}
    for name in args.only:
        print(f"{name}", flush=True)
        got[name] = parts[name](args.jobs if name == "workers" else args.seconds) if name != "claims" else claims()
    c, w, pr, cr = got["claims"], got["workers"], got["predictions"], got["creates"]
    kinds = ("sinusoid", "omniglot-20w1s", "omniglot-10w5s-fine-tune")
    one, two = {k: w[k + "/1"] for k in kinds}, {k: w[k + "/2"] for k in kinds}
    rows_w = "\n".join(f"| {k} | {one[k]:.1f} | {two[k]:.1f} | {two[k] / one[k]:.2f} |" for k in kinds)
    us = {t: v["redis_cpu_us_per_claim"] for t, v in c.items()}
    rows_c = "\n".join(
        f"| {t} | {v.get('script_us', 0):.1f} | {us[t]:.1f} | {1e6 / us[t]:,.0f} | {v['client_claims_per_s']:,.0f} |"
        for t, v in c.items()
    )
    api = {n: pr[f"api/{n}"] for n in (1, 2)}
    text = (
        "# Capacity inputs\n\n"
        f"`python -m bench.capacity --jobs {args.jobs} --seconds {args.seconds:g}` on this machine (2 cores, shared by "
        "the API, the workers, Redis and the load).\n\n"
        "## Adaptations/s by worker processes (two tenants, jobs created at once)\n\n"
        "| job | 1 worker | 2 workers | ratio |\n| --- | --- | --- | --- |\n" + rows_w + "\n\n"
        "## Prediction images/s by API processes (20-image PNG requests, wrk, 8 connections)\n\n"
        "| API processes | images/s | p50 | errors |\n| --- | --- | --- | --- |\n"
        + "\n".join(f"| {n} | {a['images_per_s']:.0f} | {a['p50_ms']:.1f} ms | {a['errors']} |" for n, a in api.items())
        + "\n\n## Creates/s of one API process (no worker: the API's own cost)\n\n"
        "| job | creates/s |\n| --- | --- |\n"
        + "\n".join(f"| {k} | {v:.0f} |" for k, v in cr.items())
        + "\n\n## The scheduler's claim on one Redis core\n\n"
        "| tenants in the rotation | the claim script (µs) | Redis process CPU per claim (µs) "
        "| claims per Redis core-second | claims/s of one Python client |\n"
        "| --- | --- | --- | --- | --- |\n" + rows_c + "\n"
    )
    save("capacity", text + "\n![1 and 2 processes](capacity.png)\n", got)
    plot(one, two, api)


def plot(one: dict, two: dict, api: dict) -> None:
    """The scaling this machine shows: 1 and 2 worker processes by job, 1 and 2 API processes."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(one)
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [one[k] for k in names], 0.4, label="1 worker")
    axes[0].bar([i + 0.2 for i in x], [two[k] for k in names], 0.4, label="2 workers")
    axes[0].set_xticks(list(x), names, fontsize=8)
    axes[0].set_ylabel("adaptations/s")
    axes[0].legend()
    axes[1].bar(["1 API process", "2 API processes"], [api[1]["images_per_s"], api[2]["images_per_s"]])
    axes[1].set_ylabel("prediction images/s")
    fig.suptitle("python -m bench.capacity, 2 cores")
    save_figure(fig, RESULTS / "capacity.png")


if __name__ == "__main__":
    main()
