"""An adaptation to run elsewhere: `GET /v1/adaptations/{id}/export` writes one safetensors file
(the base's θ under `base/`, the adapted tensors as the service stores them under `adapted/`, and in
its metadata the base's JSON and the adaptation's record), and `Exported` predicts from it offline,
through the same functions the service answers with (`answer`, `predictions`): the same inputs give
the same predictions. Needs torch and this package's `models`, nothing of the service."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from . import checkpoint
from .nets import Base
from .preprocess import assemble, open_image, shrink
from .registry import input_spec

FORMAT = "rapid-adapt-export/1"
RECORD = ("id", "model", "model_version", "task", "mode", "steps", "classes", "target_shape", "metrics", "created_at")


def export(model: Base, meta: dict, record: dict, stored: dict[str, torch.Tensor]) -> bytes:
    """The bytes of an export: a base (model, its checkpoint JSON) and one adaptation of it."""
    tensors = {f"base/{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors |= {f"adapted/{k}": v.detach().contiguous().cpu() for k, v in stored.items()}
    about = {k: record.get(k) for k in RECORD}
    return save(tensors, metadata={"format": FORMAT, "base": json.dumps(meta), "adaptation": json.dumps(about)})


@torch.inference_mode()
def answer(model: Base, stored: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One adaptation's raw outputs for a batch: what the service's predictor computes."""
    fast = model.from_stored(stored)
    return model.fast_forward(fast, model.finish(model.shared(x), fast).unsqueeze(0))[0]


def outputs(record: dict, out: torch.Tensor) -> list:
    """Class probabilities (classification) or values (regression), as plain lists."""
    return torch.softmax(out, -1).tolist() if record["task"] == "classification" else out[:, 0].tolist()


def predictions(record: dict, values: list) -> list[dict]:
    """The API's answer for each input: a label and its scores, or a value."""
    if record["task"] == "classification":
        classes = record["classes"]
        keys = [str(c) for c in classes]
        return [{"label": classes[max(range(len(p)), key=p.__getitem__)], "scores": dict(zip(keys, p))} for p in values]
    shaped = (lambda v: [v]) if record["target_shape"] == [1] else (lambda v: v)
    return [{"value": shaped(v)} for v in values]


class Exported:
    """An exported adaptation, ready to predict: `Exported.load(path).predict(inputs)` takes the
    inputs the API takes (numeric arrays, or {"image": base64 PNG/JPEG}) and answers as it does."""

    def __init__(self, model: Base, meta: dict, record: dict, stored: dict[str, torch.Tensor]):
        self.model, self.meta, self.record, self.stored = model, meta, record, stored

    @classmethod
    def load(cls, path: str | Path) -> Exported:
        with safe_open(str(path), "pt") as f:
            about = f.metadata() or {}
            if about.get("format") != FORMAT:
                raise ValueError(f"{path}: not a Rapid Adapt export ({FORMAT})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        meta, record = json.loads(about["base"]), json.loads(about["adaptation"])
        model = checkpoint.build(meta)
        theta = {k.removeprefix("base/"): v for k, v in tensors.items() if k.startswith("base/")}
        model.load_state_dict(theta)
        model.eval().requires_grad_(False)
        stored = {k.removeprefix("adapted/"): v for k, v in tensors.items() if k.startswith("adapted/")}
        return cls(model, meta, record, stored)

    def tensor(self, inputs: list) -> torch.Tensor:
        """The API's input forms -> a batch, prepared as the service prepares them."""
        spec = input_spec(self.meta)
        shape = list(spec["shape"])
        if inputs and all(isinstance(v, dict) and "image" in v for v in inputs):
            prep = {"kind": spec["preprocessing"]["kind"]}
            small = [shrink(open_image(image_bytes(v["image"]), 2**31), prep, shape) for v in inputs]
            return assemble(small, prep, shape)
        return torch.tensor(inputs, dtype=torch.float32).reshape(len(inputs), *shape)

    def predict(self, inputs: list) -> list[dict]:
        return predictions(self.record, outputs(self.record, answer(self.model, self.stored, self.tensor(inputs))))


def image_bytes(text: str) -> bytes:
    """An image input's bytes: base64, or a data:image/...;base64, URL."""
    return base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text)
