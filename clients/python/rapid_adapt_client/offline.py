"""Predict from an exported adaptation (`Client.export`), with no service: `load(path).predict(inputs)`
takes the inputs the API takes and answers as it does (the same functions compute it). Needs torch and
the rapid-adapt package (its `models`): `pip install rapid-adapt`, or this repository's `pip install -e .`."""

from __future__ import annotations

from pathlib import Path


def load(path: str | Path):
    """An export file -> an object whose `predict(inputs)` returns the API's predictions."""
    try:
        from models.exported import Exported
    except ImportError as exc:
        raise ImportError(
            "offline prediction needs torch and the rapid-adapt package's models (pip install -e . in its repository)"
        ) from exc
    return Exported.load(path)
