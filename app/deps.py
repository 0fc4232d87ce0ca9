"""Dependencies injected into routes: settings, store, queue, predictor, tenant.

All `async def`: none blocks, and FastAPI runs a plain `def` dependency in the
thread pool, one hop per dependency per request."""

from __future__ import annotations

import hmac

from fastapi import Header, Request

from .errors import ApiError
from .settings import Settings


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def store(request: Request):
    return request.app.state.store


async def queue(request: Request):
    return request.app.state.queue


async def predictor(request: Request):
    return request.app.state.predictor


async def tenant(request: Request, authorization: str | None = Header(None, description="Bearer KEY")) -> str:
    """The caller's tenant from `Authorization: Bearer KEY` (or "public" with auth off)."""
    s: Settings = request.app.state.settings
    if s.auth == "off":
        return "public"
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer KEY", ["headers", "authorization"],
                       {"WWW-Authenticate": "Bearer"})
    given = authorization[7:].strip().encode()
    for key, name in request.app.state.tenants.items():
        if hmac.compare_digest(given, key.encode()):
            return name
    raise ApiError(401, "unauthorized", "unknown API key", ["headers", "authorization"], {"WWW-Authenticate": "Bearer"})
