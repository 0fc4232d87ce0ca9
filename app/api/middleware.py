"""Request-level concerns in one plain ASGI middleware (Starlette's @app.middleware
costs a task and two streams per request): X-Request-ID, request metrics, one JSON
log line per request (with the tenant), and the body's limits: its size (413, by
Content-Length up front and by counting a chunked body) and its pace (408 for a body
that stalls, or that is shorter than its Content-Length, instead of a held connection)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from . import metrics
from .errors import ApiError, BodyRefused

log = logging.getLogger("rapid_adapt.api")


class Observe:
    def __init__(self, inner, limit: int, body_timeout: float):
        self.inner, self.limit, self.body_timeout = inner, limit, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status, seen, aid, answered = 500, 0, None, False
        too_large = ApiError(413, "body_too_large", f"request body over {self.limit} bytes")
        stalled = ApiError(408, "body_timeout", f"the request body did not arrive within {self.body_timeout:g} s")

        async def limited():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise BodyRefused(stalled) from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyRefused(too_large)
            return message

        async def observed(message):
            nonlocal status, aid, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
                aid = next((v.decode() for k, v in message["headers"] if k == b"x-adaptation-id"), None)
                if status in (408, 413):  # the rest of the body is not read: the connection cannot be reused
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        length = headers.get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.limit:
                await too_large.response()(scope, receive, observed)
            else:
                await self.inner(scope, limited, observed)
        except BodyRefused as refused:
            if not answered:
                await refused.error.response()(scope, receive, observed)
        finally:  # logged and counted even when an unexpected error escapes as a 500
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.labels(scope["method"], route, status).inc()
            metrics.LATENCY.labels(scope["method"], route).observe(elapsed)
            aid = scope.get("path_params", {}).get("aid") or aid
            tenant = scope.get("state", {}).get("tenant")
            extra = {"adaptation_id": aid} if aid else {}
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(1000 * elapsed, 2),
                    **({"tenant": tenant} if tenant else {}),
                    **extra,
                },
            )
