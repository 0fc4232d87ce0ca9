"""The ASGI app, `app.main:app`: wiring of settings, store, queue and predictor,
the error envelope, body-size limit, metrics, and the health endpoints."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager

import anyio
import redis
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, PlainTextResponse
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from models import registry

from . import logs, metrics
from .adaptation import warm_up
from .errors import ApiError, unavailable
from .jobs import Queue
from .predictor import Predictor
from .routes import router
from .settings import Settings, get_settings
from .store import Store

log = logging.getLogger("rapid_adapt.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = 100
        warm_up(torch.device("cpu"), settings.torch_threads)  # every base in memory, run once, before the first request
        if settings.auth == "off":
            log.warning("RAPID_ADAPT_AUTH=off: every caller is tenant 'public'; never expose this service")
        yield

    app = FastAPI(title="Rapid Adapt", version="1.0.0", lifespan=lifespan, default_response_class=ORJSONResponse,
                  description="Post a small labelled support set for a new task; a worker adapts a meta-trained "
                              "base in a few learned gradient steps; ask for predictions on query data.")
    app.state.settings = settings
    app.state.tenants = settings.tenants_by_key()
    if settings.auth == "on" and not app.state.tenants:
        raise RuntimeError("RAPID_ADAPT_API_KEYS is empty: set tenant:key pairs, or RAPID_ADAPT_AUTH=off explicitly")
    app.state.store = Store(settings)
    app.state.queue = Queue(settings)
    app.state.predictor = Predictor(settings, app.state.store)
    registry_ = CollectorRegistry()
    registry_.register(metrics.StoreCollector(app.state.store, app.state.queue, 3 * settings.worker_heartbeat_seconds + 1))
    app.state.metrics_registries = [REGISTRY, registry_]
    app.include_router(router)
    install_error_handlers(app)
    install_middleware(app, settings)

    @app.get("/healthz", summary="Alive")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis reachable, bases loaded, a worker answering; else 503")
    def readyz(request: Request):
        checks = {"bases": registry.names()}
        try:
            request.app.state.store.ping()
            checks["redis"] = "ok"
            checks["workers"] = len(request.app.state.store.workers_alive(3 * settings.worker_heartbeat_seconds + 1))
        except redis.RedisError:
            checks["redis"], checks["workers"] = "unreachable", 0
        ready = checks["redis"] == "ok" and checks["workers"] > 0 and bool(checks["bases"])
        return ORJSONResponse({"status": "ready" if ready else "not_ready", **checks}, status_code=200 if ready else 503,
                              headers=None if ready else {"Retry-After": "1"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus(request: Request):
        text = b"".join(generate_latest(r) for r in request.app.state.metrics_registries)
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)

    return app


def install_error_handlers(app: FastAPI) -> None:
    def reply(exc: ApiError) -> ORJSONResponse:
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError):
        return reply(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = list(first["loc"])
        field = loc[1:] if loc and loc[0] == "body" else loc
        code = "invalid_json" if first["type"] == "json_invalid" else "invalid_request"
        message = f"{'.'.join(map(str, field)) or 'body'}: {first['msg']}"
        return reply(ApiError(422, code, message, field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return reply(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(redis.RedisError)
    async def redis_down(_, exc):
        log.warning("redis unavailable: %s", exc)
        return reply(unavailable("storage"))

    @app.exception_handler(OperationalError)
    async def broker_down(_, exc):
        log.warning("broker unavailable: %s", exc)
        return reply(unavailable("the job queue"))

    @app.exception_handler(TimeoutError)
    async def timed_out(_, exc):
        return reply(ApiError(503, "timeout", "the service is overloaded; retry shortly", [], {"Retry-After": "1"}))


def install_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(Observe, limit=settings.max_body_bytes)


class Observe:
    """Plain ASGI middleware (Starlette's @app.middleware costs a task and two streams
    per request): X-Request-ID, request metrics, one JSON log line per request, and
    the body-size limit, by Content-Length up front and by counting chunked bodies."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit = inner, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status, seen, aid = 500, 0, None

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "body_too_large", f"request body over {self.limit} bytes")
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
                body = ApiError(413, "body_too_large", f"request body over {self.limit} bytes").body()
                await ORJSONResponse(body, 413)(scope, receive, observed)
            else:
                await self.inner(scope, limited, observed)
        finally:  # logged and counted even when an unexpected error escapes as a 500
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.labels(scope["method"], route, status).inc()
            metrics.LATENCY.labels(scope["method"], route).observe(elapsed)
            aid = scope.get("path_params", {}).get("aid") or aid
            log.info("request", extra={"request_id": request_id, "method": scope["method"], "route": route,
                                       "status": status, "duration_ms": round(1000 * elapsed, 2),
                                       **({"adaptation_id": aid} if aid else {})})


app = create_app()
