"""GET /v1/models and /v1/models/{name}: the bases, their inputs, limits and metrics."""

from __future__ import annotations

from fastapi import APIRouter

from ..bases import spec_of
from ..deps import RegistryDep
from ..schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="List the bases")
def list_models(registry: RegistryDep):
    return {"data": [registry.load(n)[1] for n in registry.names()]}


@router.get("/models/{name}", response_model=ModelInfo, summary="One base: input spec, limits, meta-test metrics")
def get_model(name: str, registry: RegistryDep):
    return spec_of(registry, name, ["path", "name"])
