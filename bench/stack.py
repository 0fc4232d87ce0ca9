"""Real processes for tests and benchmarks: a Redis server, Celery worker processes and
uvicorn, each on a free 127.0.0.1 port, stopped by their own pid at the end. Shared by
tests/ and bench/, so it lives here (tests import bench, never the reverse)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"acme": "key-acme", "globex": "key-globex"}
METRICS_KEY = "key-metrics"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


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
            p = subprocess.Popen(
                args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
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

    def stop_redis(self) -> None:
        self.redis.terminate()
        self.redis.wait(10)

    def start_worker(self, module: str = "worker.celery_app:app", **env) -> subprocess.Popen:
        """A worker process of the Celery app `module` (tests/faults.py has one with a fault injected)."""
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
                f"w{n}-{self.redis_port}@%h",
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
