"""The routes, one module per resource. `include` mounts v1 (behind the tenant's key)
and the health routes on an app."""

from fastapi import Depends, FastAPI

from ..deps import get_tenant
from ..schemas import ErrorBody
from . import adaptations, health, models, predictions

V1_ERRORS = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


def include(app: FastAPI) -> None:
    for module in (models, adaptations, predictions):
        app.include_router(module.router, dependencies=[Depends(get_tenant)], responses=V1_ERRORS)
    app.include_router(health.router)
