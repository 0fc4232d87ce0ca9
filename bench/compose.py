"""The Docker Compose deployment as a benchmark's stack (`python -m bench.flood --compose`).

docker-compose.yml with docker-compose.smoke.yml, as scripts/compose_smoke.sh runs it: every
service on the host network on 127.0.0.1 (API on 18000, the three Redis servers on 16379-16381),
each container a CPU cgroup of its own, the services as non-root users. Its image is the one the
smoke test builds from this checkout (`bash scripts/compose_smoke.sh` first); the tenants' keys
are bench/stack.py's, its `env` (RAPID_ADAPT_* settings) goes into the containers' env file.
One deployment per run, its volumes removed when it stops: no run inherits another's backlog.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import yaml

from .stack import KEYS, METRICS_KEY, ROOT, wait_until

IMAGE, BASE_IMAGE = "rapid-adapt:smoke", "rapid-adapt-base:bookworm-haproxy"  # scripts/compose_smoke.sh's
PORTS = {"API_PORT": "18000", "BROKER_PORT": "16379", "STORE_PORT": "16380", "CACHE_PORT": "16381"}
SERVICES = ("redis-broker", "redis-store", "redis-cache", "api", "worker")


class ComposeStack:
    """The deployment's services as containers; `roots` names each one's main process on this host."""

    def __init__(self, tmp: Path | None = None):
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="rapid-adapt-compose-"))
        self.url = f"http://127.0.0.1:{PORTS['API_PORT']}"
        self.env: dict[str, str] = {}  # the containers' variables (RAPID_ADAPT_*, WEB_CONCURRENCY), as Stack.env
        self.n_workers = 0

    def _compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        secrets_dir, env_file = self.tmp / "secrets", self.tmp / "env"
        shell = (
            os.environ
            | PORTS
            | {
                "COMPOSE_PROJECT_NAME": "rapid-adapt-bench",
                **{f"{role}_HOST": "127.0.0.1" for role in ("BROKER", "STORE", "CACHE")},
                "RAPID_ADAPT_IMAGE": IMAGE,
                "SMOKE_BASE_IMAGE": BASE_IMAGE,
                "SECRETS_DIR": str(secrets_dir),
                "RAPID_ADAPT_ENV_FILE": str(env_file),
            }
        )
        return subprocess.run(["docker-compose", *args], cwd=ROOT, env=shell, check=True, text=True, **kw)

    def start(self, workers: int = 1) -> ComposeStack:
        """Up with `workers` worker containers, once /readyz counts them all (on the host network they share
        the host's name, and Celery's node name with it: each beats under a name of its own start)."""
        (self.tmp / "secrets").mkdir(exist_ok=True)
        for role in ("broker", "store", "cache"):
            (self.tmp / "secrets" / f"{role}_password").write_text(secrets.token_hex(16))
            (self.tmp / "secrets" / f"{role}_password").chmod(0o644)  # the containers' users read them
        settings = {  # this shell's RAPID_ADAPT_* too, as Stack passes them (Compose's own URLs override them)
            **{k: v for k, v in os.environ.items() if k.startswith("RAPID_ADAPT_")},
            "RAPID_ADAPT_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "RAPID_ADAPT_METRICS_KEY": METRICS_KEY,
            **self.env,
        }
        (self.tmp / "env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        files = ("-f", "docker-compose.yml", "-f", "docker-compose.smoke.yml")
        config = yaml.safe_load(self._compose(*files, "config", capture_output=True).stdout)
        for service in config["services"].values():
            service.pop("ports", None)  # the host network refuses published ports (as compose_smoke.sh drops them)
        config["services"]["redis-store"]["command"][-1] = config["services"]["redis-store"]["command"][-1].replace(
            "--maxmemory 128mb",
            "--maxmemory 1gb",  # the smoke test's cap: too small for a flood's support sets
        )
        (self.tmp / "compose.yml").write_text(yaml.safe_dump(config))
        self.n_workers = workers
        try:
            self._compose("-f", str(self.tmp / "compose.yml"), "up", "-d", "--no-build", "--scale", f"worker={workers}",
                          *SERVICES, capture_output=True)  # fmt: skip
            ready = lambda: httpx.get(self.url + "/readyz", timeout=2).json().get("workers") == workers  # noqa: E731
            wait_until(ready, 120, "the compose deployment's /readyz with all its workers")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Down, its volumes and its files (the passwords) removed."""
        try:
            self._compose("-f", str(self.tmp / "compose.yml"), "down", "-v", "--remove-orphans", capture_output=True)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _pid(self, container: str) -> int:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True)
        return int(out.stdout.strip() or 0)

    def roots(self) -> dict[str, int]:
        """Each container's main process on this host, by role (its children counted under it)."""
        names = {"api": "api_1", "redis (store)": "redis-store_1"}
        names |= {f"worker {i}": f"worker_{i + 1}" for i in range(self.n_workers)}
        return {role: self._pid(f"rapid-adapt-bench_{name}") for role, name in names.items()}

    def workers_alive(self) -> bool:
        return all(pid > 0 for role, pid in self.roots().items() if role.startswith("worker"))
