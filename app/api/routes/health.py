"""Health and metrics, outside /v1 and without auth: /healthz (alive), /readyz
(Redis reachable, bases loaded, a worker answering; else 503), /metrics."""

from __future__ import annotations

import hmac

import redis
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...core.jobs import heartbeats
from ..errors import ApiError
from ..responses import FastJSON

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Alive")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable, bases loaded, a worker answering; else 503")
def readyz(request: Request):
    state = request.app.state
    checks = {"bases": state.registry.names()}
    try:
        state.store.ping()
        checks["redis"] = "ok"
        checks["workers"] = len(heartbeats.alive(state.store.r, state.settings.heartbeat_window))
    except redis.RedisError:
        checks["redis"], checks["workers"] = "unreachable", 0
    ready = checks["redis"] == "ok" and checks["workers"] > 0 and bool(checks["bases"])
    return FastJSON(
        {"status": "ready" if ready else "not_ready", **checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Behind `Authorization: Bearer RAPID_ADAPT_METRICS_KEY`; without it, open only with auth off.",
    response_class=PlainTextResponse,
)
def prometheus(request: Request):
    settings = request.app.state.settings
    given = request.headers.get("authorization", "")
    if settings.metrics_key:
        allowed = hmac.compare_digest(given.encode(), f"Bearer {settings.metrics_key}".encode())
    else:
        allowed = settings.auth == "off"
    if not allowed:
        message = "send Authorization: Bearer METRICS_KEY" if settings.metrics_key else "set RAPID_ADAPT_METRICS_KEY"
        raise ApiError(401, "unauthorized", message, ["headers", "authorization"], {"WWW-Authenticate": "Bearer"})
    text = b"".join(generate_latest(r) for r in request.app.state.metrics_registries)
    return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
