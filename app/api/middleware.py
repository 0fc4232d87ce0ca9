"""Request-level concerns in one plain ASGI middleware (Starlette's @app.middleware
costs a task and two streams per request): X-Request-ID, request metrics, one JSON
log line per request, and the body-size limit, by Content-Length up front and by
counting chunked bodies."""

from __future__ import annotations

import logging
import time
import uuid

from . import metrics
from .errors import ApiError

log = logging.getLogger("rapid_adapt.api")


class Observe:
    def __init__(self, inner, limit: int):
        self.inner, self.limit = inner, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status, seen, aid = 500, 0, None
        too_large = ApiError(413, "body_too_large", f"request body over {self.limit} bytes")

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        async def observed(message):
            nonlocal status, aid
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
                aid = next((v.decode() for k, v in message["headers"] if k == b"x-adaptation-id"), None)
            await send(message)

        length = headers.get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.limit:
                await too_large.response()(scope, receive, observed)
            else:
                await self.inner(scope, limited, observed)
        finally:  # logged and counted even when an unexpected error escapes as a 500
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.labels(scope["method"], route, status).inc()
            metrics.LATENCY.labels(scope["method"], route).observe(elapsed)
            aid = scope.get("path_params", {}).get("aid") or aid
            extra = {"adaptation_id": aid} if aid else {}
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(1000 * elapsed, 2),
                    **extra,
                },
            )
