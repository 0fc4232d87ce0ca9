"""The bases as the API shows them: a spec by name, or a 404 naming the field."""

from __future__ import annotations

from models.registry import BaseChanged, Registry

from .errors import ApiError


def spec_of(registry: Registry, name: str, field: list) -> dict:
    """The current version's spec."""
    try:
        return registry.load(name)[1]
    except KeyError:
        raise ApiError(404, "unknown_model", f"no base named {name!r}; see GET /v1/models", field) from None


def base_of(registry: Registry, record: dict, checkpoint: bool = False) -> tuple:
    """(model, spec) of the version an adaptation was made from (with `checkpoint`: (CPU model, its
    checkpoint JSON)); 409 base_changed when it is gone."""
    try:
        if checkpoint:
            return registry.checkpoint_of(record["model"], record.get("model_version"))
        return registry.load(record["model"], record.get("model_version"))
    except (KeyError, BaseChanged):
        raise ApiError(
            409,
            "base_changed",
            f"the base {record['model']} was replaced or removed since this adaptation was made, and its version "
            f"{record.get('model_version')} is no longer loaded: adapt again",
            ["model_version"],
        ) from None
