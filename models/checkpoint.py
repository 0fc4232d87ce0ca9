"""Checkpoints: NAME.safetensors holds θ and φ (tensors only, nothing pickled);
NAME.json holds everything needed to rebuild the network and to describe it."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .familiarity import Familiar
from .nets import ARCHITECTURES, Base
from .preprocess import KINDS, PREPROCESSING

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
OPTIONAL = ("tune_step_sizes.",)  # a checkpoint without them keeps their hand-set initial values


def build(meta: dict) -> Base:
    model = ARCHITECTURES[meta["architecture"]](**meta["architecture_kwargs"])
    model.default_steps = meta.get("default_steps", model.max_steps)
    model.familiar = Familiar.from_record(meta.get("auto"))
    return model


def save(model: Base, meta: dict, path: Path) -> None:
    """Write PATH.safetensors and PATH.json (meta must carry architecture and kwargs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path.with_suffix(".safetensors")), metadata={"name": path.stem})
    path.with_suffix(".safetensors").chmod(0o644)  # safetensors writes 0600; images run as another user
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load(path: Path) -> tuple[Base, dict]:
    """-> (model in eval mode, its JSON). An image base must have been trained on images
    prepared as this code prepares them: one that was not would serve wrong answers."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    prepared = meta.get("data", {}).get("preprocessing")
    if meta["architecture"] == "conv4" and prepared not in KINDS:
        raise ValueError(
            f"{path.name} was trained on images prepared as {prepared or 'an unrecorded box resize'}, but this "
            f"code prepares them as {PREPROCESSING} (models/preprocess.py): retrain it"
        )
    if meta["architecture"] == "backbone":  # an exported program with φ beside it (models/backbone.py)
        from .backbone import Backbone

        model = Backbone.from_program(path, meta)
        model.default_steps = meta.get("default_steps", model.max_steps)
        model.familiar = None
    else:
        model = build(meta)
    missing, unexpected = model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))), strict=False)
    if unexpected or any(not k.startswith(OPTIONAL) for k in missing):
        raise ValueError(f"{path.name}: tensors missing {missing} or unexpected {unexpected} for its architecture")
    model.eval().requires_grad_(False)
    return model, meta
