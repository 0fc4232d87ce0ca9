"""A backbone base: a feature extractor someone exported with `torch.export` (NAME.pt2),
served with this project's adaptation on top (issue 33).

The exported program is the frozen part (`embed`: inputs -> [B, D] vectors); the fast weights
are Conv4's prototype head (W_k = 2 c_k, b_k = -|c_k|^2, then the fast loop's steps with the
step sizes in NAME.safetensors: a project base's learned φ when the backbone is its trunk, a
small default otherwise). Inputs are images (the JSON's input spec says how they are prepared)
or vectors (embeddings computed elsewhere: the identity backbone makes the service a few-shot
head server for any modality). `fine-tune` runs the same head loop with the steps' loss also
on augmented copies of the support images (`head_views`), embedded once: the backbone stays
frozen, nothing of a foreign backbone was meta-learned to be tuned.

Files: NAME.json (`"architecture": "backbone"`, the input spec, `embedding_size`), NAME.pt2
and NAME.safetensors; `python -m models.export` writes all three and checks the round trip."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .nets import Base, PrototypeHead


class Backbone(PrototypeHead, Base):
    task = "classification"

    def __init__(
        self,
        embedding_size: int,
        input_shape: list[int],
        steps: int = 10,
        step_size: float = 0.01,
        max_ways: int = 50,
        support_shifts: bool = False,
    ):
        super().__init__(steps, step_size)
        self.dim, self.input_shape, self.max_ways = embedding_size, tuple(input_shape), max_ways
        self.support_shifts = support_shifts
        self.head_views = 4 if len(self.input_shape) == 3 else 0  # fine-tune's augmented copies (images)
        self.step_sizes["weight"] = nn.Parameter(torch.full((steps, 1, embedding_size), step_size))
        self.step_sizes["bias"] = nn.Parameter(torch.full((steps, 1), step_size))
        self._net: list = []  # the program's module, kept out of the state dict (only φ is saved)

    def attach(self, net) -> Backbone:
        """Serve `net` (the exported program's module) as the embedding."""
        self._net[:] = [net]
        return self

    @classmethod
    def from_program(cls, path: Path, meta: dict) -> Backbone:
        """Load NAME.pt2 and check it runs on the declared input and returns [B, embedding_size]."""
        model = cls(**meta["architecture_kwargs"])
        program = torch.export.load(str(Path(path).with_suffix(".pt2")))
        model.attach(program.module())
        with torch.no_grad():
            out = model.embed(torch.zeros(2, *model.input_shape))
        if tuple(out.shape) != (2, model.dim):
            raise ValueError(f"its program returns {tuple(out.shape)} for 2 inputs, not (2, {model.dim})")
        return model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._net[0](x)

    def _apply(self, fn, *args, **kwargs):
        """.to(device) moves the program too, though it is not a registered submodule."""
        super()._apply(fn, *args, **kwargs)
        if self._net:
            self._net[0]._apply(fn, *args, **kwargs)
        return self
