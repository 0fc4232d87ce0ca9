"""The bases as the API shows them: a spec by name, or a 404 naming the field."""

from __future__ import annotations

from models import registry

from .errors import ApiError


def spec_of(name: str, field: list) -> dict:
    if name not in registry.names():
        raise ApiError(404, "unknown_model", f"no base named {name!r}; see GET /v1/models", field)
    return registry.load(name)[1]
