"""What routes receive, as `Annotated` dependencies: settings, store, jobs, the
bases' registry, the predictor and the caller's tenant. All `async def`: none blocks, and FastAPI would
run a plain `def` dependency in the thread pool, one hop per dependency per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from models.registry import Registry

from ..core.config import Settings, key_digest
from ..core.jobs import Jobs
from ..core.store import Store
from .errors import ApiError
from .notices import Notices
from .predictor import Predictor


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_jobs(request: Request) -> Jobs:
    return request.app.state.jobs


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def get_notices(request: Request) -> Notices:
    return request.app.state.notices


bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer KEY`")


async def get_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The caller's tenant from `Authorization: Bearer KEY` (or "public" with auth off)."""
    if request.app.state.settings.auth == "off":
        request.state.tenant = "public"
        return "public"
    if credentials is None or not credentials.credentials:
        raise unauthorized("send Authorization: Bearer KEY")
    name = tenant_of_key(credentials.credentials, request.app.state.tenants)
    if name is None:
        raise unauthorized("unknown API key")
    request.state.tenant = name  # for the request log
    return name


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, ["headers", "authorization"], {"WWW-Authenticate": "Bearer"})


def tenant_of_key(key: str, tenants: dict[bytes, str]) -> str | None:
    """The tenant of an API key, else None: its digest compared with every known key's digest,
    each in constant time (settings.tenants_by_key keeps digests, not keys)."""
    given = key_digest(key.strip())
    found = None
    for digest, name in tenants.items():
        if hmac.compare_digest(given, digest):
            found = name
    return found


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
NoticesDep = Annotated[Notices, Depends(get_notices)]
TenantDep = Annotated[str, Depends(get_tenant)]
