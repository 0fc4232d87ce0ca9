"""A bounded load generator for the prediction endpoint (127.0.0.1 only):
`python -m bench.load URL KEY IDS_FILE --seconds S --concurrency C --images N`.
Prints one JSON line: requests, errors, seconds, latencies in ms."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import httpx


async def run(args) -> dict:
    ids = Path(args.ids).read_text().split()
    body = json.loads(Path(args.body).read_text())
    lat, errors = [], 0
    deadline = time.monotonic() + args.seconds
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"},
                                 limits=limits, timeout=30) as c:
        async def one():
            nonlocal errors
            while time.monotonic() < deadline:
                aid = rng.choice(ids)
                t = time.perf_counter()
                r = await c.post(f"/v1/adaptations/{aid}/predictions", content=body_bytes,
                                 headers={"Content-Type": "application/json"})
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200

        body_bytes = json.dumps(body).encode()
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(args.concurrency)))
        return {"requests": len(lat), "errors": errors, "seconds": time.monotonic() - started, "latencies_ms": lat}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url"); p.add_argument("key"); p.add_argument("ids"); p.add_argument("body")
    p.add_argument("--seconds", type=float, default=10); p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
