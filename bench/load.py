"""A bounded load generator for the prediction endpoint (127.0.0.1 only):
`python -m bench.load URL KEY IDS_FILE BODY_FILE --seconds S --concurrency C`.
Uses wrk (C, so the generator takes little of the 2 cores it shares with the
server) when installed (`apt-get install wrk`), else an asyncio httpx client.
Prints one JSON line: tool, requests, errors, seconds, latency percentiles in ms."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import tempfile
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


WRK_SCRIPT = """
local ids = {%s}
local body = [==[%s]==]
local headers = {["Authorization"] = "Bearer %s", ["Content-Type"] = "application/json"}
request = function()
  return wrk.format("POST", "/v1/adaptations/" .. ids[math.random(#ids)] .. "/predictions", headers, body)
end
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\": %%d, \\"errors\\": %%d, \\"seconds\\": %%f, \\"p50\\": %%f, \\"p99\\": %%f}\\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def run_wrk(args) -> dict:
    ids = Path(args.ids).read_text().split()
    body = Path(args.body).read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(WRK_SCRIPT % (",".join(f'"{i}"' for i in ids), body, args.key))
        f.flush()
        out = subprocess.run(["wrk", "-t", "1", "-c", str(args.concurrency), "-d", f"{max(1, int(args.seconds))}s",
                              "-s", f.name, "--timeout", "10s", args.url], capture_output=True, text=True).stdout
    r = json.loads(re.search(r"JSON (\{.*\})", out).group(1))
    return {"tool": "wrk", **r}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url"); p.add_argument("key"); p.add_argument("ids"); p.add_argument("body")
    p.add_argument("--seconds", type=float, default=10); p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    if shutil.which("wrk"):
        print(json.dumps(run_wrk(args)))
    else:
        r = asyncio.run(run(args))
        lat = sorted(r.pop("latencies_ms"))
        print(json.dumps({"tool": "httpx", **r, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)]}))


if __name__ == "__main__":
    main()
