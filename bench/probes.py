"""Issue 28's probes over HTTP, against a stack of one API process: `python -m bench.probes`.

- keyless: 6 parallel 8 MB JSON bodies (nested empty lists) without an API key, each sent
  whole from its own socket; the time to each 401, and `/healthz` latency meanwhile against
  idle (bars: each 401 under 100 ms, /healthz p50 within 2x of idle).
- rebuild: one tenant's 500-drawing fine-tune, its weights evicted, rebuilt when it asks for a
  prediction; another tenant's prediction latency meanwhile against idle (bar: p50 within 2x).
- waits: 105 concurrent `GET /v1/adaptations/{id}?wait=30` of one tenant on a job that stays
  queued (no worker runs); another tenant's `GET /v1/adaptations` latency meanwhile against
  idle (bar: p50 within 2x).

Each probe's baseline (idle) is measured in the same run, just before. Writes
bench/results/probes.md and probes.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from app.demo import sinusoid_task
from bench.stack import KEYS, Stack

from .report import save

MB8 = 8 * 2**20 - 1024


def timed_gets(url: str, path: str, key: str | None, n: int, pause: float = 0.02) -> list[float]:
    """`n` sequential GETs -> their latencies in ms."""
    headers = {"Authorization": f"Bearer {KEYS[key]}"} if key else {}
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.get(path)
            out.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text[:200]
            time.sleep(pause)
    return out


def keyless_body(port: int, answers: list) -> None:
    """Send an 8 MB body of nested empty lists without a key; record (ms to the status line, status)."""
    body = b'{"model":"omniglot-conv4","support":[' + b"[[]]," * ((MB8 - 60) // 5) + b"[[]]]}"
    head = (
        f"POST /v1/adaptations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    t = time.perf_counter()
    status = None
    try:
        s.sendall(head)
        sender = threading.Thread(target=lambda: _send_quietly(s, body), daemon=True)
        sender.start()
        line = s.recv(64)
        status = int(line.split()[1]) if line else None
    finally:
        answers.append(((time.perf_counter() - t) * 1000, status))
        s.close()


def _send_quietly(s: socket.socket, body: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answered and closed: the rest was never wanted
        s.sendall(body)


def probe_keyless(stack: Stack) -> dict:
    idle = timed_gets(stack.url, "/healthz", None, 60)
    answers: list = []
    senders = [threading.Thread(target=keyless_body, args=(stack.api_port, answers)) for _ in range(6)]
    loaded: list[float] = []
    stop = threading.Event()

    def poll():
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get("/healthz")
                loaded.append((time.perf_counter() - t) * 1000)
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(0.5)
    stop.set()
    poller.join()
    return {
        "answers_ms": sorted(a for a, _ in answers),
        "statuses": sorted({s for _, s in answers}),
        "healthz_idle_p50_ms": statistics.median(idle),
        "healthz_loaded_p50_ms": statistics.median(loaded),
        "ratio": statistics.median(loaded) / statistics.median(idle),
    }


def probe_waits(stack: Stack, waiters: int = 105) -> dict:
    body = {"model": "sinusoid-mlp", "support": sinusoid_task(0)[0]}
    acme = {"Authorization": f"Bearer {KEYS['acme']}"}
    aid = httpx.post(stack.url + "/v1/adaptations", json=body, headers=acme, timeout=30).json()["id"]
    idle = timed_gets(stack.url, "/v1/adaptations", "globex", 60)

    async def hold() -> tuple[list[int], list[float]]:
        limits = httpx.Limits(max_connections=waiters + 5)
        async with httpx.AsyncClient(base_url=stack.url, headers=acme, timeout=60, limits=limits) as c:
            held = [asyncio.ensure_future(c.get(f"/v1/adaptations/{aid}?wait=30")) for _ in range(waiters)]
            await asyncio.sleep(2.0)  # all of them in and waiting
            loaded = await asyncio.to_thread(timed_gets, stack.url, "/v1/adaptations", "globex", 60)
            answers = await asyncio.gather(*held)
            return [a.status_code for a in answers], loaded

    statuses, loaded = asyncio.run(hold())
    return {
        "waiters": waiters,
        "statuses": sorted(set(statuses)),
        "list_idle_p50_ms": statistics.median(idle),
        "list_loaded_p50_ms": statistics.median(loaded),
        "ratio": statistics.median(loaded) / statistics.median(idle),
    }


def client(stack: Stack, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=120)


def probe_rebuild(stack: Stack) -> dict:
    """acme's 500-drawing fine-tune, its weights evicted (from Redis, and from the API's memory
    by a restart); globex's 20-drawing predictions idle, then while acme's next prediction
    waits for the weights to be rebuilt."""
    import redis

    from .flood import bodies

    adapt_body, queries, big_job, _ = bodies()
    with client(stack, "acme") as acme, client(stack, "globex") as globex:
        big = acme.post("/v1/adaptations", json=big_job).json()["id"]
        while acme.get(f"/v1/adaptations/{big}?wait=30").json()["status"] != "succeeded":
            pass
        mine = globex.post("/v1/adaptations?wait=30", json=adapt_body).json()["id"]
    redis.Redis(port=stack.redis_port, db=1).delete(f"ra:w:{big}")  # evicted from the cache
    stack.restart_api()  # and from the API process's memory
    with client(stack, "acme") as acme, client(stack, "globex") as globex:

        def predict() -> float:
            t = time.perf_counter()
            r = globex.post(f"/v1/adaptations/{mine}/predictions", json=queries)
            assert r.status_code == 200, r.text[:200]
            return (time.perf_counter() - t) * 1000

        idle = [predict() for _ in range(40)]
        answer: dict = {}
        owner = threading.Thread(target=lambda: answer.update(owner_predicts(acme, big, queries)))
        owner.start()
        during = []
        while owner.is_alive():
            during.append(predict())
        owner.join()
    return {
        "first_answer": answer,
        "predictions_during": len(during),
        "idle_p50_ms": statistics.median(idle),
        "rebuild_p50_ms": statistics.median(during),
        "ratio": statistics.median(during) / statistics.median(idle),
    }


def owner_predicts(acme: httpx.Client, aid: str, queries: dict) -> dict:
    t = time.perf_counter()
    r = acme.post(f"/v1/adaptations/{aid}/predictions", json={"inputs": queries["inputs"][:1]})
    return {"status": r.status_code, "ms": (time.perf_counter() - t) * 1000}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    stack = Stack(Path(tempfile.mkdtemp(prefix="rapid-adapt-probes-")))
    try:
        stack.start_redis()
        stack.start_api()  # no worker: the waited-on job stays queued
        print("probe: keyless 8 MB bodies", flush=True)
        keyless = probe_keyless(stack)
        print("probe: 105 waits", flush=True)
        waits = probe_waits(stack)
        print("probe: an evicted 500-drawing fine-tune rebuilt", flush=True)
        stack.start_worker()
        stack.wait_ready()
        rebuild = probe_rebuild(stack)
    finally:
        stack.stop()
    k, w, b = keyless, waits, rebuild
    text = "\n".join(
        [
            "# Probes (issue 28)",
            "",
            f"`python -m bench.probes` on {time.strftime('%Y-%m-%d')}, 2 cores, one API process, idle baselines "
            "measured in the same run just before each probe.",
            "",
            "| probe | bar | idle p50 ms | under the probe p50 ms | ratio | other |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| 6 parallel 8 MB bodies, no key: /healthz | each 401 < 100 ms, p50 within 2x "
            f"| {k['healthz_idle_p50_ms']:.2f} | {k['healthz_loaded_p50_ms']:.2f} | {k['ratio']:.2f} "
            f"| answers {k['statuses']} in {', '.join(f'{a:.1f}' for a in k['answers_ms'])} ms |",
            f"| {w['waiters']} concurrent ?wait= of acme: globex's list | p50 within 2x "
            f"| {w['list_idle_p50_ms']:.2f} | {w['list_loaded_p50_ms']:.2f} | {w['ratio']:.2f} "
            f"| the waits answered {w['statuses']} |",
            f"| acme's evicted 500-drawing fine-tune rebuilt: globex's 20-drawing predictions | p50 within 2x "
            f"| {b['idle_p50_ms']:.2f} | {b['rebuild_p50_ms']:.2f} | {b['ratio']:.2f} "
            f"| {b['predictions_during']} predictions meanwhile; acme's first answer {b['first_answer']['status']} "
            f"in {b['first_answer']['ms']:.0f} ms |",
            "",
        ]
    )
    save("probes", text, {"keyless": keyless, "waits": waits, "rebuild": rebuild})


if __name__ == "__main__":
    main()
