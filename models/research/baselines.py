"""The baselines every figure is compared against: the classic fine-tuning loop
(deep-copy a model, a new Adam, loss.backward() and step() in a Python loop),
used from scratch, for plain transfer, and by the benchmarks."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets import Base


class Classifier(nn.Module):
    """A standard classifier: a copy of a base's embedding plus a linear head of N
    outputs. It runs the base's own `embed`, so a baseline and the meta-learned base
    share one forward pass and compare on method, not on implementation."""

    def __init__(self, base: Base, n_ways: int):
        super().__init__()
        self.base = copy.deepcopy(base)
        self.head = nn.Linear(base.dim, n_ways)

    def forward(self, x):
        return self.head(self.base.embed(x))


def classic_finetune(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, task: str, params=None
) -> nn.Module:
    """Deep-copy `model` and train it on (x, y) for `steps` Adam steps; `params`
    picks which of the copy's parameters train (a callable of the copy; all by default)."""
    model = copy.deepcopy(model).train().requires_grad_(False)
    trainable = list(params(model) if params else model.parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trainable, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            out = model(x)
            loss = F.cross_entropy(out, y) if task == "classification" else F.mse_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
