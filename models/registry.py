"""The registry of committed bases: `load(name)` gives the network with its
spec (the JSON the API serves), each loaded once per process."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from . import checkpoint
from .adapt import mode_steps
from .nets import Base

SERVED = ("omniglot-conv4", "sinusoid-mlp")

INPUT_SPECS = {
    "conv4": {
        "kind": "image",
        "shape": [1, 28, 28],
        "range": [0.0, 1.0],
        "encodings": ["array", "png", "jpeg"],
        "preprocessing": "PNG or JPEG of any size, ink dark on light: grayscale, padded to a square with "
        "background, box-resized to Omniglot's 105-pixel canvas (if not that size already), a 112-pixel "
        "window centred on the ink's centre of mass (moved only as far as keeps every stroke in) reduced "
        "4x4 to 28x28, inverted so that ink is 1.0 (models/preprocess.py). Arrays are taken as already "
        "preprocessed: [1, 28, 28], ink 1.0 on 0.0.",
    },
    "mlp": {
        "kind": "vector",
        "shape": [1],
        "range": [-5.0, 5.0],
        "encodings": ["array"],
        "preprocessing": "none: x as a one-element array",
    },
}


@cache
def names(directory: Path = checkpoint.CHECKPOINT_DIR) -> tuple[str, ...]:
    """The served bases present on disk (looked up once per process: checkpoints ship with the code)."""
    return tuple(n for n in SERVED if (Path(directory) / f"{n}.safetensors").exists())


def metrics(path: Path) -> dict | None:
    """The base's canonical meta-test evaluation, with the cross-domain one under `cross_domain`."""
    evaluation, cross = path.with_suffix(".eval.json"), path.parent / f"{path.name}.glyphs.eval.json"
    found = json.loads(evaluation.read_text()) if evaluation.exists() else None
    if found is not None and cross.exists():
        found["cross_domain"] = json.loads(cross.read_text())
    return found


@cache
def load(name: str, directory: Path = checkpoint.CHECKPOINT_DIR) -> tuple[Base, dict]:
    """-> (model in eval mode with no parameter requiring grad, spec dict)."""
    path = Path(directory) / name
    if not path.with_suffix(".safetensors").exists():
        raise KeyError(name)
    model, meta = checkpoint.load(path)
    spec = {
        "name": name,
        "task": meta["task"],
        "input": INPUT_SPECS[meta["architecture"]],
        "max_ways": meta.get("max_ways") if meta["task"] == "classification" else None,
        "default_steps": model.default_steps,
        "max_steps": model.max_steps,
        "modes": mode_steps(model),
        "algorithm": meta["algorithm"],
        "adapted": meta.get("adapted"),
        "metrics": metrics(path),
    }
    return model, spec
