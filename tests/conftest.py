"""Fixtures. Two speeds: in-process tests (`redis_server`, `settings`, `api`: the app in
this process through httpx's ASGI transport, a real Redis) run in `--fast`; tests of
real process stacks (`stack`, `new_stack`) are marked `stack` and run in the full suite."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import redis

from app.core.config import Settings
from bench.stack import KEYS, METRICS_KEY, Stack


def pytest_collection_modifyitems(items):
    """A test that uses a process stack (a fixture named *stack) is marked `stack` (left out of
    `scripts/test.sh --fast`)."""
    for item in items:
        if any(name.endswith("stack") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def new_stack(tmp_path):
    """A private stack for tests that stop or kill parts of it."""
    stacks = []

    def make(**env) -> Stack:
        s = Stack(tmp_path, **env)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis for the in-process tests (each test starts from an empty one)."""
    s = Stack(tmp_path_factory.mktemp("redis"))
    s.start_redis()
    try:
        yield s
    finally:
        s.stop()


def make_settings(redis_server: Stack, **overrides) -> Settings:
    """Settings for an in-process app or lifecycle on `redis_server`, whatever the environment says."""
    port = redis_server.redis_port
    values = {
        "broker_url": f"redis://127.0.0.1:{port}/0",
        "redis_url": f"redis://127.0.0.1:{port}/1",
        "cache_url": None,
        "api_keys": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "metrics_key": METRICS_KEY,
        "auth": "on",
        "models_dir": "",
        "worker_heartbeat_seconds": 0.5,
    }
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def settings(redis_server) -> Settings:
    redis.Redis(port=redis_server.redis_port).flushall()
    return make_settings(redis_server)


class InProcess:
    """The app in this process, its lifespan run, called through httpx's ASGI transport from a
    loop on a thread of its own (so a test stays plain synchronous code)."""

    def __init__(self, app):
        self.app, self.loop = app, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def __enter__(self):
        self.thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._run(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://in-process")
        return self

    def __exit__(self, *exc):
        self._run(self.client.aclose())
        self._run(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def request(self, method: str, path: str, key: str | None = "acme", **kw) -> httpx.Response:
        headers = kw.pop("headers", {}) | ({"Authorization": f"Bearer {KEYS[key]}"} if key else {})
        return self._run(self.client.request(method, path, headers=headers, **kw))


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}, comments left out."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] not in "#"}


def run_next_job(settings) -> str:
    """What a worker does with one ticket, in this process: claim the next job, adapt, store. That job
    only: without slices (a job that ran past one, on a loaded machine, would run another tenant's
    waiting job first, and a test's order of jobs would depend on timing)."""
    from app.core.config import get_settings
    from app.core.jobs import Jobs, Tickets, make_celery
    from app.core.store import Store
    from worker import celery_app, tasks

    celery_app.Held.jobs = Jobs(Store(settings), Tickets(make_celery(settings)), settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(get_settings(), "job_slice_seconds", 0)  # the worker's own settings, as its process read them
        return tasks.run(celery_app.Held.jobs.claim("in-process"))


@pytest.fixture
def api(settings):
    """The app in process on a real Redis (no worker: jobs stay in line unless a test runs them)."""
    from app.api.factory import create_app

    with InProcess(create_app(settings)) as app:
        yield app
