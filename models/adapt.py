"""The inner loop: the one `adapt` that evaluation, the worker and the benchmarks call.

From a base's θ and φ (its learned step sizes) and a support set, take K
gradient steps on the fast weights: fast <- fast - φ[k] * grad. In `train` mode
the steps stay on the autograd graph (second order; `first_order` cuts the
gradient's own graph, as first-order MAML does) so the outer loop can
differentiate through them. In serving mode the embedding runs once without a
graph and only the fast weights ever get a gradient, and a divergence guard
stops a task whose support loss blows up (inputs far from what the base was
meta-trained on) at its lowest-loss weights instead of returning garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .nets import Base


@dataclass
class Adapted:
    fast: dict[str, torch.Tensor]  # adapted fast weights, leading task dim T
    loss_before: torch.Tensor  # [T] support loss at the initial fast weights
    loss_after: torch.Tensor  # [T] support loss after the last step
    steps: int
    trajectory: list[dict[str, torch.Tensor]] | None = None  # fast weights after 0..K steps
    stopped_early: torch.Tensor | None = None  # [T] bool: the divergence guard kept earlier weights


def check_support(
    model: Base, x: torch.Tensor, y: torch.Tensor, n_ways: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate a support set; accepts one task ([S, *shape]) or a batch ([T, S, *shape])."""
    shape = tuple(model.input_shape)
    if x.dim() == len(shape) + 1:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.dim() != len(shape) + 2 or tuple(x.shape[2:]) != shape:
        raise ValueError(f"support inputs must have shape [S, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("support set is empty")
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"support has {x.shape[1]} inputs but {y.shape[1] if y.dim() > 1 else y.numel()} labels/targets"
        )
    if not torch.isfinite(x).all():
        raise ValueError("support inputs contain NaN or infinite values")
    if model.task == "classification":
        if y.dtype not in (torch.int64, torch.int32):
            raise ValueError("classification labels must be integer class indices")
        n_ways = int(y.max()) + 1 if n_ways is None else n_ways
        if n_ways < 2:
            raise ValueError("support set needs at least 2 classes")
        if n_ways > model.max_ways:
            raise ValueError(f"support set has {n_ways} classes, more than this base's max_ways {model.max_ways}")
        if int(y.min()) < 0 or int(y.max()) >= n_ways:
            raise ValueError(f"labels must lie in 0..{n_ways - 1}")
        present = torch.zeros(y.shape[0], n_ways, dtype=torch.bool, device=y.device).scatter_(1, y.long(), True)
        if not present.all():
            raise ValueError("every class 0..N-1 needs at least one support example")
        y = y.long()
    else:
        if not torch.is_floating_point(y):
            raise ValueError("regression targets must be floating point")
        if y.dim() == 2:
            y = y.unsqueeze(-1)
        if not torch.isfinite(y).all():
            raise ValueError("support targets contain NaN or infinite values")
        n_ways = 0
    return x, y, n_ways


def adapt(
    model: Base,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int | None = None,
    *,
    n_ways: int | None = None,
    train: bool = False,
    first_order: bool = False,
    trajectory: bool = False,
) -> Adapted:
    """Adapt `model` to a support set; see the module docstring."""
    x, y, n_ways = check_support(model, support_x, support_y, n_ways)
    steps = model.default_steps if steps is None else steps
    if not 0 <= steps <= model.max_steps:
        raise ValueError(f"steps must lie in 0..{model.max_steps}, got {steps}")
    t, s = x.shape[:2]
    with torch.set_grad_enabled(train):
        feats = model.embed_support(x.flatten(0, 1)).unflatten(0, (t, s))
    stopped = torch.zeros(t, dtype=torch.bool, device=x.device)
    with torch.enable_grad():
        fast = model.init_fast(feats, y, n_ways)
        if not train:
            fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
        path = [fast] if trajectory else None
        loss_before, best, best_loss = None, fast, torch.full((t,), float("inf"), device=x.device)
        for k in range(steps):
            loss = model.loss(model.fast_forward(fast, feats), y)
            loss_before = loss.detach() if loss_before is None else loss_before
            grads = torch.autograd.grad(loss.sum(), list(fast.values()), create_graph=train and not first_order)
            stepped = {n: p - model.step_size(n, k) * g for (n, p), g in zip(fast.items(), grads)}
            if not train:  # divergence guard: a task whose loss blew up stops at its lowest-loss weights
                better = loss.detach() < best_loss
                best, best_loss = pick(better, fast, best), torch.where(better, loss.detach(), best_loss)
                stopped |= diverged(loss.detach(), loss_before)
                stepped = {n: p.detach().requires_grad_() for n, p in pick(stopped, best, stepped).items()}
            fast = stepped
            if path is not None:
                path.append(fast)
    with torch.no_grad():
        loss_after = model.loss(model.fast_forward(fast, feats.detach()), y)
        if not train and steps:
            stopped |= diverged(loss_after, loss_before)
            if stopped.any():  # only then do the kept weights differ from the last step's
                fast = pick(stopped, best, fast)
                loss_after = model.loss(model.fast_forward(fast, feats), y)
            fast = {n: p.detach() for n, p in fast.items()}
    return Adapted(fast, loss_after if loss_before is None else loss_before, loss_after, steps, path, stopped)


def diverged(loss: torch.Tensor, loss_before: torch.Tensor) -> torch.Tensor:
    """A support loss that is no longer finite or rose far above where it started."""
    return ~torch.isfinite(loss) | (loss > 10 * loss_before + 1)


def pick(mask: torch.Tensor, a: dict, b: dict) -> dict:
    """Per task: a where mask, else b."""
    return {n: torch.where(mask.view(-1, *[1] * (b[n].dim() - 1)), a[n], b[n]) for n in b}


@torch.inference_mode()
def predict(model: Base, fast: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of one adapted task on inputs x [Q, *shape]: logits [Q, N] or values [Q, out]."""
    return model.fast_forward(fast, model.embed(x).unsqueeze(0))[0]
