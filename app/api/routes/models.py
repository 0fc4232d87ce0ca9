"""GET /v1/models and /v1/models/{name}: the bases, their inputs, limits and metrics."""

from __future__ import annotations

from fastapi import APIRouter

from ..bases import spec_of
from ..deps import RegistryDep
from ..schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="List the bases")
def list_models(registry: RegistryDep):
    return {"data": [spec for name in registry.names() if (spec := loaded(registry, name))]}


def loaded(registry, name: str) -> dict | None:
    """A listed base's spec; None for one refused when loaded (logged by the registry): the
    listing goes on without it."""
    try:
        return registry.load(name)[1]
    except KeyError:
        return None


@router.get("/models/{name}", response_model=ModelInfo, summary="One base: input spec, limits, meta-test metrics")
def get_model(name: str, registry: RegistryDep):
    return spec_of(registry, name, ["path", "name"])
