"""Real processes for tests and benchmarks: a Redis server, Celery worker processes and
uvicorn, each on a free 127.0.0.1 port, stopped by their own pid at the end; and a `Receiver`
of POSTs (webhooks, OTLP spans) on one. Shared by tests/ and bench/, so it lives here (tests
import bench, never the reverse)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"acme": "key-acme-0123456789abcdef", "globex": "key-globex-0123456789abcdef"}
METRICS_KEY = "key-metrics-0123456789abcdef"
# each process a group of its own (stopped, with its children, by os.killpg), all in this session, as
# scripts/quickstart.sh starts them: one autogroup, where the nice values of the API's and the workers'
# threads weigh against each other (app/core/priority.py)
GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    """Poll `check` until it answers something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process and its descendants
    (each process counted under its nearest named ancestor), from /proc: where the cores went."""
    tick, procs = os.sysconf("SC_CLK_TCK"), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, cpu
    by_pid, out = {pid: name for name, pid in roots.items()}, dict.fromkeys(roots, 0.0)
    for pid, (_, cpu) in procs.items():
        p = pid
        while p in procs and p not in by_pid:
            p = procs[p][0]
        if p in by_pid:
            out[by_pid[p]] += cpu
    return out


class Receiver:
    """An HTTP server on 127.0.0.1 (a thread of this process) that records each POST, (headers
    lower-cased, body), and answers the next of `answers` (then 204) after `delay` seconds: a
    webhook receiver for the tests, an OTLP collector for bench.tracing."""

    def __init__(self, answers=(), delay: float = 0.0, path: str = ""):
        self.calls: list[tuple[dict, bytes]] = []
        self.answers, self.delay = list(answers), delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(outer.delay)
                self.send_response(outer.answers.pop(0) if outer.answers else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """Redis + N workers + the API, configured through RAPID_ADAPT_* variables."""

    def __init__(self, tmp: Path, **env):
        self.tmp, self.procs = tmp, []
        self.redis_port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = os.environ | {
            "RAPID_ADAPT_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RAPID_ADAPT_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/1",
            "RAPID_ADAPT_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "RAPID_ADAPT_WORKER_HEARTBEAT_SECONDS": "0.5",
            "RAPID_ADAPT_METRICS_KEY": METRICS_KEY,
            "PYTHONPATH": str(ROOT),
            **{f"RAPID_ADAPT_{k.upper()}": str(v) for k, v in env.items()},
        }
        self.redis = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, args, name, env=None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            env = env or self.env
            group = {"start_new_session": True} if env.get("STACK_SESSIONS") == "own" else GROUP  # a bench's baseline
            p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, **group)
        self.procs.append(p)
        return p

    def start_redis(self, persist: bool = False, maxmemory: str = "0") -> None:
        """With persist, an append-only file keeps everything across a restart, as in Compose."""
        (self.tmp / "redis").mkdir(exist_ok=True)
        args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if persist else "no", "--maxmemory", maxmemory]
        args += ["--maxmemory-policy", "noeviction", "--dir", str(self.tmp / "redis")]
        self.redis = self._spawn([shutil.which("redis-server"), *args], "redis")
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.redis_port), 0.2).close() or True, 10, "redis")

    def start_cluster(self, nodes: int = 6, replicas: int = 1) -> list[int]:
        """The store on a Redis Cluster of `nodes` servers (`replicas` per primary), the broker on
        the plain Redis of start_redis. -> the nodes' ports (self.cluster: port -> process)."""
        ports = [free_port() for _ in range(nodes)]
        self.cluster = {}
        for port in ports:
            d = self.tmp / f"cluster-{port}"
            d.mkdir(exist_ok=True)
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)]
            args += ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-port", str(free_port())]
            args += ["--repl-diskless-sync-delay", "0"]  # a replica's first sync at once, not 5 s later
            self.cluster[port] = self._spawn([shutil.which("redis-server"), *args], f"cluster-{port}")
        for port in ports:
            wait_until(lambda p=port: socket.create_connection(("127.0.0.1", p), 0.2).close() or True, 10, "a node")
        subprocess.run(
            [shutil.which("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        import redis

        wait_until(
            lambda: all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports),
            30,
            "the cluster",
        )
        roles = [redis.Redis(port=p).info("replication") for p in ports]
        replicas = [p for p, info in zip(ports, roles) if info["role"] == "slave"]
        synced = lambda p: redis.Redis(port=p).info("replication").get("master_link_status") == "up"  # noqa: E731
        wait_until(lambda: all(synced(p) for p in replicas), 30, "the replicas' first sync")  # else none can fail over
        self.env["RAPID_ADAPT_REDIS_URL"] = f"redis://127.0.0.1:{ports[0]}/0"
        self.env["RAPID_ADAPT_REDIS_CLUSTER"] = "on"
        return ports

    def start_sentinel_broker(self, sentinels: int = 3) -> dict[str, int]:
        """The broker as a primary, a replica and `sentinels` Redis Sentinels that fail it over
        after a second; the broker URL in Celery's sentinel:// form. -> the ports by role."""
        ports = {"primary": free_port(), "replica": free_port()}
        for role, port in ports.items():
            d = self.tmp / f"broker-{role}"
            d.mkdir(exist_ok=True)
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", str(d)]
            if role == "replica":
                args += ["--replicaof", "127.0.0.1", str(ports["primary"])]
            setattr(self, f"broker_{role}", self._spawn([shutil.which("redis-server"), *args], f"broker-{role}"))
        for i in range(sentinels):
            port = ports[f"sentinel{i}"] = free_port()
            conf = self.tmp / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                f"sentinel monitor broker 127.0.0.1 {ports['primary']} {sentinels // 2 + 1}\n"
                "sentinel down-after-milliseconds broker 1000\nsentinel failover-timeout broker 5000\n"
            )
            self._spawn([shutil.which("redis-server"), str(conf), "--sentinel"], conf.stem)
        import redis

        wait_until(
            lambda: redis.Redis(port=ports["sentinel0"]).execute_command("SENTINEL REPLICAS broker"), 20, "sentinels"
        )
        self.env["RAPID_ADAPT_BROKER_URL"] = ";".join(
            f"sentinel://127.0.0.1:{p}/0" for r, p in ports.items() if r.startswith("sentinel")
        )
        self.env["RAPID_ADAPT_BROKER_MASTER_NAME"] = "broker"
        return ports

    def stop_redis(self) -> None:
        self.redis.terminate()
        self.redis.wait(10)

    def start_worker(self, module: str = "worker.celery_app:app", name: str | None = None, **env) -> subprocess.Popen:
        """A worker process of the Celery app `module` (tests/faults.py has one with a fault injected),
        its Celery node name `name` (else one of its own)."""
        extra = self.env | {f"RAPID_ADAPT_{k.upper()}": str(v) for k, v in env.items()}
        n = len(self.workers)
        w = self._spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--pool",
                "prefork",
                "-n",
                name or f"w{n}-{self.redis_port}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            f"worker{n}",
            extra,
        )
        self.workers.append(w)
        return w

    def start_api(self) -> None:
        self.api = self._spawn(
            [
                sys.executable,
                "-m",
                "app.serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
            ],
            "api",
        )
        wait_until(lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200, 60, "api")

    def restart_api(self) -> None:
        os.killpg(self.api.pid, signal.SIGTERM)
        self.api.wait(30)
        self.start_api()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, timeout, "readyz")

    def start(self, workers: int = 1) -> Stack:
        self.start_redis()
        for _ in range(workers):
            self.start_worker()
        self.start_api()
        self.wait_ready()
        return self

    def roots(self) -> dict[str, int]:
        """Each process's pid by role (its children counted under it, `cpu_seconds`)."""
        roles = {"api": self.api.pid, "redis": self.redis.pid}
        return roles | {f"worker {i}": w.pid for i, w in enumerate(self.workers)}

    def workers_alive(self) -> bool:
        return all(w.poll() is None for w in self.workers)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(self.tmp.glob("*.log"))
        )
