"""A bounded load generator for the prediction endpoint (127.0.0.1 only):
`python -m bench.load URL KEY IDS_FILE BODY_FILE --seconds S --concurrency C`.

It is wrk, a C load generator, so that the generator takes little of the 2 cores it
shares with the server: a Python client on the same cores halves the figures it
measures. `require_wrk` installs it (Debian's package) where it is missing and it
can, or stops with a message saying how. Prints one JSON line: tool, requests,
errors, seconds, p50 and p99 latency in ms."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WRK_SCRIPT = """
local ids = {%s}
local body = [==[%s]==]
local headers = {["Authorization"] = "Bearer %s", ["Content-Type"] = "application/json"}
request = function()
  return wrk.format("POST", "/v1/adaptations/" .. ids[math.random(#ids)] .. "/predictions", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  local fields = '"requests": %%d, "errors": %%d, "seconds": %%f, "p50": %%f, "p99": %%f'
  io.write(string.format("JSON {" .. fields .. "}\\n", summary.requests, errors, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def require_wrk() -> str:
    """wrk's path; installs Debian's package when running as root, else exits saying how."""
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install wrk)", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing and could not be installed: `sudo apt-get install wrk`, then run again")
    return shutil.which("wrk")


def run_wrk(url: str, key: str, ids: list[str], body: str, seconds: float, concurrency: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(WRK_SCRIPT % (",".join(f'"{i}"' for i in ids), body, key))
        f.flush()
        args = ["-t", "1", "-c", str(concurrency), "-d", f"{max(1, int(seconds))}s", "-s", f.name, "--timeout", "10s"]
        out = subprocess.run([require_wrk(), *args, url], capture_output=True, text=True).stdout
    return {"tool": "wrk", **json.loads(re.search(r"JSON (\{.*\})", out).group(1))}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("key")
    p.add_argument("ids")
    p.add_argument("body")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    ids = Path(a.ids).read_text().split()
    print(json.dumps(run_wrk(a.url, a.key, ids, Path(a.body).read_text(), a.seconds, a.concurrency)))


if __name__ == "__main__":
    main()
