"""Request-level concerns in one plain ASGI middleware (Starlette's @app.middleware
costs a task and two streams per request): X-Request-ID, request metrics, one JSON
log line per request (with the tenant), and the body's limits: its size (413, by
Content-Length up front and by counting a chunked body; MAX_BODY_BYTES for the two routes that
take data, 64 KiB for the rest) and its pace (408 for a body that stalls, that is shorter than its
Content-Length, or that has not arrived whole by BODY_DEADLINE_SECONDS, instead of a held
connection). Headers that never end are the proxy's to time out (docs/operations.md#tls)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from . import metrics
from .errors import ApiError, BodyRefused

log = logging.getLogger("rapid_adapt.api")


SMALL_BODY = 64 * 2**10  # a cancel, or a body sent where none is read
DATA_ROUTES = re.compile(r"/v1/adaptations(/[^/]+/predictions)?/?")  # POSTed support sets and inputs


class Observe:
    def __init__(self, inner, limit: int, body_timeout: float, body_deadline: float):
        self.inner, self.data_limit, self.body_timeout, self.body_deadline = inner, limit, body_timeout, body_deadline

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status, seen, aid, answered, whole = 500, 0, None, False, False
        data = scope["method"] == "POST" and DATA_ROUTES.fullmatch(scope["path"])
        limit = self.data_limit if data else SMALL_BODY
        too_large = ApiError(413, "body_too_large", f"request body over {limit} bytes")
        stalled = ApiError(408, "body_timeout", f"the request body did not arrive within {self.body_timeout:g} s")
        late = ApiError(408, "body_timeout", f"the request body was not whole within {self.body_deadline:g} s")

        async def limited():
            nonlocal seen, whole
            if whole:  # the body is in: a later receive() listens for the client going away
                return await receive()
            left = self.body_deadline - (time.perf_counter() - started)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.body_timeout, left)))
            except asyncio.TimeoutError:
                raise BodyRefused(stalled if left > self.body_timeout else late) from None
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyRefused(too_large)
            whole = message["type"] != "http.request" or not message.get("more_body", False)
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
            if length.isdigit() and int(length) > limit:
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
