"""Draining: what an API process does between SIGTERM and its exit, so that a rolling
update or a scale-down answers no error but a clear 503.

On the first SIGTERM (app/serve.py) the process starts draining for `drain_seconds`: it
keeps accepting, answers every new request but /healthz with 503 `draining` (Retry-After,
Connection: close), so a load balancer's readiness check (/readyz) takes it out and a
client retries elsewhere, while requests already in flight run to their end. Then uvicorn's
graceful shutdown waits for what is still in flight. A second signal exits at once."""

from __future__ import annotations

import time

from .errors import ApiError

_since: float | None = None  # monotonic time the drain began; one app per process


def begin() -> None:
    global _since
    if _since is None:
        _since = time.monotonic()


def active() -> bool:
    return _since is not None


class Drain:
    """ASGI middleware, outermost: while draining, new requests get 503 `draining`."""

    def __init__(self, inner):
        self.inner = inner
        self.refusal = ApiError(
            503, "draining", "this API process is shutting down; retry", [], {"Retry-After": "1", "Connection": "close"}
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _since is not None and scope["path"] != "/healthz":
            return await self.refusal.response()(scope, receive, send)
        await self.inner(scope, receive, send)
