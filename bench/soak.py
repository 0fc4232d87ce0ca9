"""The soak: `python -m bench.soak --minutes 10 --clients 8`.

A stack of its own (Redis, 2 API processes, a worker), and N clients that each loop:
create an adaptation (half Omniglot PNGs, half sinusoid points; a short TTL), wait for it,
predict, read it, list a page, delete half of them. It reports requests, errors (every
5xx and any answer that is not the expected one), latency p50/p99, API and worker RSS
after a one-minute warm-up and at the end, and Redis memory at the start, at the end, and
once the TTLs have passed. Writes bench/results/soak.md and soak.json."""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from app.core.config import Settings
from app.demo import omniglot_task, sinusoid_task
from bench.stack import KEYS, Stack

from .report import save

TTL = 20
MEMORY = ("used_memory", "used_memory_dataset", "mem_clients_normal")  # all, the data, client buffers


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for k in kids:
            found += [int(k), *children(int(k))]
    return found


def largest_keys(port: int, n: int = 5) -> list[tuple[str, int]]:
    """The largest keys of every database (broker, store, cache): where memory stays."""
    sizes = []
    for db in range(3):
        r = redis.Redis(port=port, db=db)
        sizes += [(f"db{db} {k.decode()}", int(r.memory_usage(k, samples=0) or 0)) for k in r.scan_iter()]
    return sorted(sizes, key=lambda x: -x[1])[:n]


def client_loop(url: str, key: str, stop: float, out: dict, seed: int) -> None:
    rng = random.Random(seed)
    tasks = [omniglot_task(seed=s, n_way=5, n_query=2) for s in range(3)] + [sinusoid_task(s) for s in range(3)]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        while time.monotonic() < stop:
            support, queries, _ = rng.choice(tasks)
            model = "omniglot-conv4" if isinstance(queries[0], dict) else "sinusoid-mlp"
            t = time.perf_counter()
            r = c.post("/v1/adaptations?wait=10", json={"model": model, "support": support, "ttl_seconds": TTL})
            record(out, r, 200, t)
            if r.status_code != 200:
                continue
            aid = r.json()["id"]
            for method, path, body, expected in (
                ("POST", f"/v1/adaptations/{aid}/predictions", {"inputs": queries}, 200),
                ("GET", f"/v1/adaptations/{aid}", None, 200),
                ("GET", "/v1/adaptations?limit=10", None, 200),
            ):
                t = time.perf_counter()
                record(out, c.request(method, path, json=body), expected, t)
            if rng.random() < 0.5:
                t = time.perf_counter()
                record(out, c.delete(f"/v1/adaptations/{aid}"), 204, t)


def record(out: dict, r: httpx.Response, expected: int, started: float) -> None:
    with out["lock"]:
        out["latencies"].append((time.perf_counter() - started) * 1000)
        out["requests"] += 1
        out["5xx"] += r.status_code >= 500
        out["errors"] += r.status_code != expected


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args(argv)
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="rapid-adapt-soak-")),
        tenant_predict_images_per_second=100_000,
        tenant_max_jobs=1000,
    )
    stack.env["WEB_CONCURRENCY"] = "2"
    stack.start()
    try:
        r = redis.Redis(port=stack.redis_port, db=1)  # the store (memory is the whole server's)
        api = next(p.pid for p in stack.procs if "app.serve" in " ".join(map(str, p.args)))
        workers = lambda: [pid for w in stack.workers for pid in (w.pid, *children(w.pid))]
        pids = lambda: ([api, *children(api)], workers())
        mem = lambda: {k: int(v) for k, v in r.info("memory").items() if k in MEMORY}
        out = {"lock": threading.Lock(), "latencies": [], "requests": 0, "5xx": 0, "errors": 0}
        redis_start, keys_start = mem(), {k.decode() for k in r.scan_iter()}
        stop = time.monotonic() + 60 * args.minutes
        threads = [
            threading.Thread(target=client_loop, args=(stack.url, KEYS["acme"], stop, out, i))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(min(60, 30 * args.minutes))
        api_pids, worker_pids = pids()
        warm = {"api": rss(api_pids), "worker": rss(worker_pids), "redis": mem()}
        samples = [(round(time.monotonic() - stop + 60 * args.minutes), warm["api"])]
        print(f"soak: warmed up: {warm}", flush=True)
        while time.monotonic() < stop - 1:
            time.sleep(min(30, stop - time.monotonic()))
            samples.append((round(time.monotonic() - stop + 60 * args.minutes), rss(pids()[0])))
            print(
                f"soak: {samples[-1][0]} s, {out['requests']} requests, API RSS {samples[-1][1] / 2**20:.0f} MiB",
                flush=True,
            )
        for t in threads:
            t.join()
        api_pids, worker_pids = pids()
        end = {"api": rss(api_pids), "worker": rss(worker_pids), "redis": mem()}
        time.sleep(TTL + Settings().sweep_seconds + 5)  # the TTLs, then the workers' sweep of the indexes
        after_ttl, keys_after = mem(), {k.decode() for k in r.scan_iter()}
        largest = largest_keys(stack.redis_port)
        stats_after = {k: v for k, v in r.memory_stats().items() if isinstance(v, int | float)}
        lat = sorted(out["latencies"])
        res = {
            "minutes": args.minutes,
            "clients": args.clients,
            "requests": out["requests"],
            "5xx": out["5xx"],
            "errors": out["errors"],
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(0.99 * (len(lat) - 1))],
            "api_rss_warm": warm["api"],
            "api_rss_end": end["api"],
            "api_rss_growth": end["api"] / warm["api"] - 1,
            "worker_rss_warm": warm["worker"],
            "worker_rss_end": end["worker"],
            "redis_start": redis_start,
            "redis_end": end["redis"],
            "redis_after_ttl": after_ttl,
            "redis_keys": [len(keys_start), len(keys_after)],
            "redis_keys_new": sorted(keys_after - keys_start),
            "redis_largest_keys_after_ttl": largest,
            "redis_memory_stats_after_ttl": stats_after,
            "api_rss_samples": samples,
        }
    finally:
        stack.stop()
    lines = [
        "# Soak",
        "",
        f"`python -m bench.soak --minutes {args.minutes:g} --clients {args.clients}` on {time.strftime('%Y-%m-%d')}: "
        "2 API processes, 1 worker, one Redis.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| requests | {res['requests']} |",
        f"| 5xx / other unexpected answers | {res['5xx']} / {res['errors'] - res['5xx']} |",
        f"| latency p50 / p99 | {res['p50_ms']:.1f} / {res['p99_ms']:.1f} ms |",
        f"| API RSS after warm-up / at the end | {res['api_rss_warm'] / 2**20:.0f} / "
        f"{res['api_rss_end'] / 2**20:.0f} MiB ({100 * res['api_rss_growth']:+.1f}%) |",
        f"| worker RSS after warm-up / at the end | {res['worker_rss_warm'] / 2**20:.0f} / "
        f"{res['worker_rss_end'] / 2**20:.0f} MiB |",
        f"| Redis keys of the store at the start / after the TTLs | {res['redis_keys'][0]} / {res['redis_keys'][1]} "
        f"(new: {', '.join(res['redis_keys_new']) or 'none'}) |",
        *(
            f"| Redis {label} at the start / at the end / after the TTLs | "
            + " / ".join(f"{res[when][field] / 2**20:.2f}" for when in ("redis_start", "redis_end", "redis_after_ttl"))
            + " MiB |"
            for field, label in zip(MEMORY, ("used_memory", "data (used_memory_dataset)", "client buffers"))
        ),
        "",
    ]
    text = "\n".join(lines)
    save("soak", text, res)


if __name__ == "__main__":
    main()
