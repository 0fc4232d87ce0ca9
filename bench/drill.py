"""Failure drills under a bounded load: `python -m bench.drill [--seconds 30] [--only a b c d]`.

(a) store primary: the store on a 6-node Redis Cluster with STORE_REPLICAS=1; the primary
    that holds the tenant's slot is killed (SIGKILL). Counted: adaptations answered
    `succeeded` before the kill that no longer answer `succeeded` or cannot predict after it.
(b) broker primary: the broker behind three Redis Sentinels; its primary is killed.
    Counted: jobs the API accepted (202) that never end `succeeded`.
(c) a whole host: three "hosts", each an API process and a worker on its own loopback
    address (127.0.0.2-4), behind HAProxy on 127.0.0.1; every process of one host is killed
    at once. Counted: failed requests, and whether each was in flight at the kill; lost jobs;
    the time from the kill until every job accepted before it has succeeded.
(d) a rolling update of the same three hosts: each in turn gets SIGTERM and is started again.
    Counted: answers other than 2xx (a draining API's 503 is the only one allowed), lost jobs.

Workers beat every 2 s, as deployed (the reaper's window is 7 s). The load: 2 or 3
threads, each creating 5-point sinusoid adaptations with `?wait=10` back to back; the kill
(or the update) comes after a third of `--seconds`, and the load runs on for another third
after the failover (a, b), the update (d), or to `--seconds` (c). Requests are plain HTTP (no
client retries), so every failure is counted. Writes bench/results/drill.md and drill.json;
tests/test_fleet.py runs each drill for a few seconds and checks the bars of issue 34."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from app.core import keys
from app.demo import sinusoid_task
from bench.stack import KEYS, Stack, free_port, wait_until

from .report import RESULTS, save

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}


@dataclass
class Sent:
    """One create: when it left and came back (monotonic), its HTTP status (0: no answer) and id."""

    t0: float
    t1: float
    status: int
    aid: str | None = None
    job: str | None = None  # the status the answer carried
    code: str | None = None  # the error's code, for an answer that is not 2xx


@dataclass
class Load:
    """`clients` threads creating adaptations through `url` until `seconds` have passed (or, with
    `stop_after`, until the kill's call returns)."""

    url: str
    clients: int
    seconds: float
    sent: list[Sent] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    ended: float = 0.0  # when the kill's call returned

    def run(self, kill_after: float, kill, stop_after: bool = False) -> float:
        """Run the load, call `kill` after `kill_after` seconds. -> the kill's monotonic time."""
        start = time.monotonic()
        threads = [threading.Thread(target=self._client, args=(i, start)) for i in range(self.clients)]
        for t in threads:
            t.start()
        time.sleep(kill_after)
        killed = time.monotonic()
        kill()
        self.ended = time.monotonic()
        if stop_after:
            self.stopped.set()
        for t in threads:
            t.join()
        return killed

    def _client(self, i: int, start: float) -> None:
        body = {"model": "sinusoid-mlp", "support": sinusoid_task(i)[0]}
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=15) as c:
            while time.monotonic() - start < self.seconds and not self.stopped.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/adaptations?wait=10", json=body)
                    answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    sent = Sent(t0, time.monotonic(), r.status_code, answer.get("id"), answer.get("status"))
                    sent.code = (answer.get("error") or {}).get("code")
                    self.sent.append(sent)
                    if r.status_code >= 300:
                        time.sleep(0.2)  # as a client backs off, so failures count attempts, not a spin
                except httpx.HTTPError:
                    self.sent.append(Sent(t0, time.monotonic(), 0))
                    time.sleep(0.2)

    def answering_again(self, timeout: float) -> None:
        """Wait until a create sent from now on is accepted (the service answers again)."""
        since = time.monotonic()
        wait_until(lambda: any(x.aid and x.t0 >= since for x in list(self.sent)), timeout, "answers again")

    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.aid]

    def failed(self) -> list[Sent]:
        return [s for s in self.sent if not s.aid]


def statuses(url: str, ids: list[str], timeout: float = 60) -> dict[str, str]:
    """The status of every id, waiting up to `timeout` for those not yet ended."""
    out, deadline = {}, time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        for aid in ids:
            while True:
                try:
                    out[aid] = c.get(f"/v1/adaptations/{aid}").json().get("status", "gone")
                except httpx.HTTPError:
                    out[aid] = "unreachable"
                if out[aid] not in ("queued", "running", "unreachable") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    return out


def predicts(url: str, aid: str) -> bool:
    r = httpx.post(f"{url}/v1/adaptations/{aid}/predictions", json={"inputs": [[0.1]]}, headers=AUTH, timeout=30)
    return r.status_code == 200


def summary(load: Load, killed: float) -> dict:
    first_ok = min((s.t1 for s in load.accepted() if s.t0 > killed), default=None)
    return {
        "requests": len(load.sent),
        "accepted": len(load.accepted()),
        "failed": len(load.failed()),
        "failed_codes": sorted({s.status for s in load.failed()}),
        "answering_again_s": None if first_ok is None else round(first_ok - killed, 2),
    }


def store_primary(seconds: float, clients: int = 2, tmp: Path | None = None, beat: float = 2.0) -> dict:
    """Drill (a)."""
    s = Stack(
        tmp or Path(tempfile.mkdtemp(prefix="rapid-adapt-drill-a-")), worker_heartbeat_seconds=beat, store_replicas=1
    )
    try:
        s.start_redis()
        s.start_cluster()
        s.start_worker()
        s.start_api()
        s.wait_ready()
        node = redis.RedisCluster.from_url(s.env["RAPID_ADAPT_REDIS_URL"])
        primary = node.get_node_from_key(keys.tenant_index("acme")).port

        def kill() -> None:
            os.killpg(s.cluster[primary].pid, signal.SIGKILL)
            port = lambda: (
                redis.RedisCluster.from_url(s.env["RAPID_ADAPT_REDIS_URL"])
                .get_node_from_key(  # noqa: E731
                    keys.tenant_index("acme")
                )
                .port
            )
            wait_until(lambda: port() != primary, 60, "the store's failover")
            load.answering_again(60)
            time.sleep(seconds / 3)  # the load goes on after the failover

        load = Load(s.url, clients, 600)
        killed = load.run(seconds / 3, kill, stop_after=True)
        acked = [x.aid for x in load.accepted() if x.job == "succeeded" and x.t1 < killed]
        now = statuses(s.url, acked)
        lost = [a for a in acked if now[a] != "succeeded" or not predicts(s.url, a)]
        later = statuses(s.url, [x.aid for x in load.accepted() if x.t0 > killed])
        return summary(load, killed) | {
            "acked_succeeded_before_kill": len(acked),
            "lost_after_kill": len(lost),
            "accepted_after_kill_succeeded": sum(v == "succeeded" for v in later.values()),
            "accepted_after_kill": len(later),
        }
    finally:
        s.stop()


def broker_primary(seconds: float, clients: int = 2, tmp: Path | None = None, beat: float = 2.0) -> dict:
    """Drill (b)."""
    s = Stack(tmp or Path(tempfile.mkdtemp(prefix="rapid-adapt-drill-b-")), worker_heartbeat_seconds=beat)
    try:
        s.start_redis()
        ports = s.start_sentinel_broker()
        s.start_worker()
        s.start_api()
        s.wait_ready()
        sentinel = redis.Redis(port=ports["sentinel0"])

        def kill() -> None:
            os.killpg(s.broker_primary.pid, signal.SIGKILL)
            promoted = lambda: int(sentinel.sentinel_get_master_addr_by_name("broker")[1]) == ports["replica"]  # noqa: E731
            wait_until(promoted, 60, "the broker's failover")
            load.answering_again(60)
            time.sleep(seconds / 3)  # the load goes on after the failover

        load = Load(s.url, clients, 600)
        killed = load.run(seconds / 3, kill, stop_after=True)
        now = statuses(s.url, [x.aid for x in load.accepted()], timeout=90)
        return summary(load, killed) | {"lost": sum(v != "succeeded" for v in now.values())}
    finally:
        s.stop()


HAPROXY = """global
  maxconn 512
defaults
  mode http
  timeout connect 500ms
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch 1
  option http-buffer-request
  retry-on conn-failure empty-response junk-response 503
frontend api
  bind 127.0.0.1:{port}
  default_backend hosts
backend hosts
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 2
{servers}
"""


class Hosts:
    """Three "hosts" on their own loopback addresses, each an API process (the same port on each)
    and a worker, behind HAProxy on 127.0.0.1, which checks /readyz every 0.5 s and sends a
    request that found a host down or draining (503) to another."""

    addresses = ("127.0.0.2", "127.0.0.3", "127.0.0.4")

    def __init__(self, s: Stack):
        self.s, self.api_port, self.lb_port = s, free_port(), free_port()
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.url = f"http://127.0.0.1:{self.lb_port}"

    def start(self) -> Hosts:
        self.s.start_redis()
        for h in self.addresses:
            self.start_host(h)
        for h in self.addresses:
            self.wait_host(h)
        conf = self.s.tmp / "haproxy.cfg"
        servers = "\n".join(f"  server {h} {h}:{self.api_port} check" for h in self.addresses)
        conf.write_text(HAPROXY.format(port=self.lb_port, servers=servers))
        self.s._spawn([shutil.which("haproxy"), "-f", str(conf), "-db"], "haproxy")
        wait_until(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, 20, "haproxy")
        return self

    def start_host(self, h: str) -> None:
        api = [sys.executable, "-m", "app.serve", "--host", h, "--port", str(self.api_port), "--log-level", "warning"]
        self.procs[h] = [self.s.start_worker(), self.s._spawn(api, f"api-{h}")]

    def wait_host(self, h: str) -> None:
        url = f"http://{h}:{self.api_port}/readyz"
        wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, 90, h)

    def signal(self, h: str, sig: int) -> None:
        for p in self.procs[h]:
            os.killpg(p.pid, sig)


def host(seconds: float, clients: int = 3, tmp: Path | None = None, beat: float = 2.0) -> dict:
    """Drill (c)."""
    s = Stack(tmp or Path(tempfile.mkdtemp(prefix="rapid-adapt-drill-c-")), worker_heartbeat_seconds=beat)
    try:
        hosts = Hosts(s).start()
        url = hosts.url
        r, victim, held = redis.Redis(port=s.redis_port, db=1), f"w1-{s.redis_port}@", []

        def kill() -> None:
            """When the victim's worker holds a job (10 s at most), so the drill counts its recovery."""
            deadline = time.monotonic() + 10
            while not held and time.monotonic() < deadline:
                held.extend(a.decode() for a, v in r.hgetall(keys.flights("acme")).items() if victim in v.decode())
            hosts.signal(hosts.addresses[1], signal.SIGKILL)

        load = Load(url, clients, seconds)
        killed = load.run(seconds / 3, kill)
        before = [x.aid for x in load.accepted() if x.t0 < killed]
        now = statuses(url, [x.aid for x in load.accepted()], timeout=90)
        finished = []
        with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
            for a in before:
                got = c.get(f"/v1/adaptations/{a}").json()
                if got.get("finished_at"):
                    finished.append(got["finished_at"])
        wall_at_kill = time.time() - (time.monotonic() - killed)
        recovered = max((_unix(f) for f in finished), default=wall_at_kill) - wall_at_kill
        in_flight = [x for x in load.failed() if x.t0 <= killed <= x.t1]
        return summary(load, killed) | {
            "job_held_by_the_killed_worker": bool(held),
            "failed_in_flight_at_kill": len(in_flight),
            "failed_after_kill": len(load.failed()) - len(in_flight),
            "lost": sum(v != "succeeded" for v in now.values()),
            "recovery_s": round(max(recovered, 0.0), 2),
        }
    finally:
        s.stop()


def rolling(seconds: float, clients: int = 3, tmp: Path | None = None, beat: float = 2.0, replace: int = 3) -> dict:
    """Drill (d): a rolling update. One host after another gets SIGTERM (its API drains for 2 s,
    its worker finishes the job in hand) and is started again on its address, while the load
    runs on until the last is back. Counted: answers other than 2xx, by status and code."""
    s = Stack(
        tmp or Path(tempfile.mkdtemp(prefix="rapid-adapt-drill-d-")), worker_heartbeat_seconds=beat, drain_seconds=2
    )
    try:
        hosts = Hosts(s).start()

        def update() -> None:
            for h in hosts.addresses[:replace]:
                old = hosts.procs[h]
                hosts.signal(h, signal.SIGTERM)
                for p in old:
                    p.wait(60)
                hosts.start_host(h)
                hosts.wait_host(h)
            time.sleep(seconds / 3)  # the load goes on with every host new

        load = Load(hosts.url, clients, seconds=600)
        began = load.run(seconds / 3, update, stop_after=True)
        now = statuses(hosts.url, [x.aid for x in load.accepted()], timeout=90)
        others = [f"{x.status} {x.code}" for x in load.failed()]
        return summary(load, began) | {
            "hosts_replaced": replace,
            "update_s": round(load.ended - began, 1),
            "not_2xx": {k: others.count(k) for k in sorted(set(others))},
            "5xx_other_than_draining": sum(1 for x in load.failed() if x.status >= 500 and x.code != "draining"),
            "lost": sum(v != "succeeded" for v in now.values()),
        }
    finally:
        s.stop()


def _unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


DRILLS = {"a": ("store primary (cluster)", store_primary), "b": ("broker primary (sentinel)", broker_primary)}
DRILLS["c"] = ("a whole host (behind HAProxy)", host)
DRILLS["d"] = ("a rolling update of the three hosts", rolling)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument(
        "--only", nargs="*", choices=sorted(DRILLS), default=sorted(DRILLS), help="the rest from the last run"
    )
    args = p.parse_args(argv)
    last = RESULTS / "drill.json"
    results = {k: v for k, v in (json.loads(last.read_text()) if last.exists() else {}).items() if k in DRILLS}
    for name in sorted(args.only):
        what, drill = DRILLS[name]
        print(f"drill ({name}): {what}, {args.seconds:g} s of load", file=sys.stderr, flush=True)
        results[name] = drill(args.seconds)
        print(f"  {results[name]}", file=sys.stderr, flush=True)
    rows = "\n".join(
        f"| ({k}) {DRILLS[k][0]} | {v['requests']} | {v['accepted']} | {v['failed']} | "
        f"{v.get('lost', v.get('lost_after_kill'))} | {v.get('answering_again_s')} | "
        + ", ".join(f"{x}={y}" for x, y in v.items() if x not in ("requests", "accepted", "failed", "lost"))
        + " |"
        for k, v in sorted(results.items())
    )
    text = (
        "# Failure drills\n\n"
        f"`python -m bench.drill --seconds {args.seconds:g}`: a bounded load of 5-point sinusoid creates with "
        "`?wait=10` (plain HTTP, no retries); the kill after a third of the time (the module's docstring says how long "
        "the load runs on).\n\n"
        "| drill | requests | accepted | failed | lost | answering again (s) | details |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n"
        "Bars (issue 34): (a) 0 adaptations answered `succeeded` lost; (b) 0 jobs lost; (c) no job lost, failed "
        "requests only among those in flight on the killed host, recovery under 30 s; (d) no job lost, no 5xx but "
        "a draining process's 503.\n"
    )
    save("drill", text, results)


if __name__ == "__main__":
    main()
