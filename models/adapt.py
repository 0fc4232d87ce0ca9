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

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import familiarity
from .augment import support_views
from .nets import PLAIN, Base

CHUNK = 64  # images per embedding pass: near CPU's fastest batch (larger ones spill the caches), and a slice


def chunked(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, pause: Callable[[], None], *aligned: torch.Tensor
) -> torch.Tensor:
    """fn over x [B, ...] (and `aligned` tensors [B, ...], sliced alike) in passes of CHUNK images,
    calling `pause()` between them: a 500-image support set is embedded in slices that a worker may
    interleave with other tenants' jobs. A per-image fn gives the same values in one pass or in
    chunks (batched tasks rely on it)."""
    if len(x) <= CHUNK:
        return fn(x, *aligned)
    out = []
    for i in range(0, len(x), CHUNK):
        if i:
            pause()
        out.append(fn(x[i : i + CHUNK], *(a[i : i + CHUNK] for a in aligned)))
    return torch.cat(out)


def no_pause() -> None:
    pass


@dataclass
class Adapted:
    fast: dict[str, torch.Tensor]  # adapted fast weights, leading task dim T
    loss_before: torch.Tensor  # [T] support loss at the initial fast weights
    loss_after: torch.Tensor  # [T] support loss after the last step
    steps: int
    trajectory: list[dict[str, torch.Tensor]] | None = None  # fast weights after 0..K steps
    stopped_early: torch.Tensor | None = None  # [T] bool: the divergence guard kept earlier weights
    mode: str = "fast"  # the inner loop that ran: "fast" or "fine-tune"
    loss_curve: torch.Tensor | None = None  # [T, K + 1] support loss before each step and after the last


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


MODES = ("fast", "fine-tune")


def mode_steps(model: Base) -> dict[str, dict[str, int]]:
    """Each mode's default and largest number of inner steps. A base without a tail
    (the sinusoid MLP, whose fast loop already adapts every weight) runs the same loop
    in both modes."""
    fast = {"default_steps": model.default_steps, "max_steps": model.max_steps}
    if not hasattr(model, "tail"):
        return {"fast": fast, "fine-tune": fast}
    return {"fast": fast, "fine-tune": {"default_steps": model.tune_steps, "max_steps": model.tune_steps}}


@dataclass
class Choice:
    """`auto`'s choice of inner loop for a support set, and the plain support's trunk features it
    computed on the way (None for a base without a trunk), which `adapt` takes as `trunk`."""

    mode: str
    trunk: torch.Tensor | None = None


def choose(model: Base, support_x: torch.Tensor, support_y: torch.Tensor) -> Choice:
    """The `auto` mode's choice, from the support set as the base sees it: fine-tune when its
    images lie beyond the base's training images, or (where the base says so) when every class
    has enough shots (`familiarity`), else fast. A base that carries no training statistics, or
    has no tail to fine-tune, is fast. The images' pass through the trunk that the choice reads
    is the one either loop would make first: handed on, it is made once."""
    familiar = getattr(model, "familiar", None)
    if familiar is None or not hasattr(model, "tail"):
        return Choice("fast")
    feats, trunk = familiarity.look(model, support_x)
    return Choice("fine-tune" if familiar.fine_tune(feats, support_y) else "fast", trunk)


def choose_mode(model: Base, support_x: torch.Tensor, support_y: torch.Tensor) -> str:
    """`choose`'s mode alone."""
    return choose(model, support_x, support_y).mode


def adapt(
    model: Base,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int | None = None,
    *,
    mode: str = "fast",
    n_ways: int | None = None,
    train: bool = False,
    first_order: bool = False,
    trajectory: bool = False,
    on_step: Callable[[int, list[float]], None] | None = None,
    seed: int = 0,
    phase: Callable[[str], AbstractContextManager] = lambda name: contextlib.nullcontext(),
    pause: Callable[[], None] = no_pause,
    trunk: torch.Tensor | None = None,
) -> Adapted:
    """Adapt `model` to a support set; see the module docstring. `mode` "fine-tune" adapts
    the base's tail too where it has one (`fine_tune`); "auto" (one task) runs the loop that
    `choose` picks. `on_step(k, loss)` is called after each step with each task's loss
    (progress, cancellation: whatever it raises stops the loop); `phase(name)` wraps each
    part (embed, steps, head: the service's trace spans);
    `pause()` is called between slices of the work (embedding chunks, steps), where a worker
    runs other tenants' waiting jobs. `trunk`, the plain support's trunk features as `choose`
    left them ([S, ...] or [T, S, ...]), saves computing them again (serving only: no gradient
    flows through them)."""
    x, y, n_ways = check_support(model, support_x, support_y, n_ways)
    t, s = x.shape[:2]
    if mode == "auto" and t == 1:  # what a request's default runs
        choice = choose(model, x[0], y[0])
        mode, trunk = choice.mode, None if train else choice.trunk
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (or auto, for one task), got {mode!r}")
    if trunk is not None:
        if train:
            raise ValueError("a given trunk carries no gradient: train without one")
        trunk = trunk.reshape(t * s, *trunk.shape[-3:])
    if mode == "fine-tune" and hasattr(model, "tail"):
        kw = {"train": train, "first_order": first_order, "trajectory": trajectory, "on_step": on_step, "seed": seed}
        kw["phase"], kw["pause"], kw["trunk"] = phase, pause, trunk
        return fine_tune(model, x, y, n_ways, steps, **kw)
    steps = model.default_steps if steps is None else steps
    if not 0 <= steps <= model.max_steps:
        raise ValueError(f"steps must lie in 0..{model.max_steps}, got {steps}")
    with phase("embed"), torch.set_grad_enabled(train):
        known = () if trunk is None else (trunk,)
        feats = chunked(model.embed_support, x.flatten(0, 1), pause, *known).unflatten(0, (t, s))
    on_feats, on_y = feats, y  # what the steps' loss is taken on
    if mode == "fine-tune" and getattr(model, "head_views", 0) and t == 1:
        # a backbone's fine-tune: the head's steps also see augmented copies of the support set,
        # embedded once by the frozen backbone (the head is still built from the plain support)
        views = support_views(x[0], torch.Generator().manual_seed(seed), model.head_views)
        with phase("embed views"), torch.no_grad():
            extra = chunked(model.embed, views, pause).unsqueeze(0)
        on_feats, on_y = torch.cat([feats, extra], 1), torch.cat([y, y.repeat(1, model.head_views)], 1)
    stopped = torch.zeros(t, dtype=torch.bool, device=x.device)
    curve = []
    with phase("steps"), torch.enable_grad():
        fast = model.init_fast(feats, y, n_ways)
        if not train:
            fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
        path = [fast] if trajectory else None
        loss_before, best, best_loss = None, fast, torch.full((t,), float("inf"), device=x.device)
        for k in range(steps):
            loss = model.loss(model.fast_forward(fast, on_feats), on_y)
            loss_before = loss.detach() if loss_before is None else loss_before
            curve.append(loss.detach())
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
            if on_step:
                on_step(k, loss.detach().tolist())
            pause()
    with torch.no_grad():
        loss_after = model.loss(model.fast_forward(fast, on_feats.detach()), on_y)
        if not train and steps:
            stopped |= diverged(loss_after, loss_before)
            if stopped.any():  # only then do the kept weights differ from the last step's
                fast = pick(stopped, best, fast)
                loss_after = model.loss(model.fast_forward(fast, on_feats), on_y)
            fast = {n: p.detach() for n, p in fast.items()}
    curve.append(loss_after)
    before = loss_after if loss_before is None else loss_before
    ran = "fine-tune" if on_feats is not feats else "fast"
    return Adapted(fast, before, loss_after, steps, path, stopped, ran, torch.stack(curve, 1))


def fine_tune(
    model,
    x,
    y,
    n_ways,
    steps,
    *,
    train=False,
    first_order=False,
    trajectory=False,
    on_step=None,
    seed=0,
    phase=lambda name: contextlib.nullcontext(),
    pause=no_pause,
    trunk=None,
) -> Adapted:
    """The `fine-tune` inner loop of a base with a tail (Conv4), for one task (T = 1).

    The trunk embeds the support set once, clean and as `tune_views` augmented copies
    (`augment.support_views`, seeded: the same support set always gives the same weights).
    Each step moves the tail by its learned step sizes down the gradient of the prototype
    loss: prototypes from the clean support, the augmented copies classified against
    them. The loss stays informative at one shot, where a support image is its own
    prototype. The head is then built from the adapted embedding of the support (and its
    views, with `support_shifts`). Support losses are those of the augmented copies."""
    if x.shape[0] != 1:
        raise ValueError("fine-tune adapts one task at a time")
    steps = model.tune_steps if steps is None else steps
    if not 0 <= steps <= model.tune_steps:
        raise ValueError(f"steps must lie in 0..{model.tune_steps} for fine-tune, got {steps}")
    xs, ys = x[0], y[0]
    gen, views = torch.Generator().manual_seed(seed), tune_views(model, len(xs))
    with phase("embed"), torch.no_grad():
        h_views = chunked(model.trunk, support_views(xs, gen, views), pause)
        h_support = [
            trunk if k == PLAIN and trunk is not None else chunked(model.trunk, v, pause)
            for k, v in enumerate(model.support_views(xs))
        ]  # the first: the plain support
    y_views = ys.repeat(views)
    onehot = F.one_hot(ys, n_ways).to(h_views.dtype)

    def view_loss(tail):
        protos = onehot.T @ model.tail(h_support[0], tail) / onehot.sum(0).unsqueeze(1)
        feats = model.tail(h_views, tail)
        return F.cross_entropy(2 * feats @ protos.T - (protos**2).sum(-1), y_views)

    def adapted(tail):  # the fast weights of a tail: it, and the head built from its support embedding
        feats = torch.stack([model.tail(h, tail) for h in h_support]).mean(0)
        return model.init_fast(feats.unsqueeze(0), y, n_ways) | {n: p.unsqueeze(0) for n, p in tail.items()}

    tail = {n: p.detach().requires_grad_() for n, p in model.tail_params().items()}
    best, best_loss, curve, stopped, path = tail, float("inf"), [], False, []
    with phase("steps"), torch.enable_grad():
        for k in range(steps):
            if trajectory:
                path.append(adapted({n: p.detach() for n, p in tail.items()}))
            loss = view_loss(tail)
            curve.append(loss.detach())
            if not train:  # divergence guard: a loss that blew up stops at the lowest-loss tail
                if stopped := bool(diverged(loss.detach(), curve[0])):
                    break
                best, best_loss = (tail, loss.item()) if loss.item() < best_loss else (best, best_loss)
            params = list(tail.values())
            grads = torch.autograd.grad(loss, params, create_graph=train and not first_order)
            tail = {n: p - model.tune_step_size(n, k) * g for (n, p), g in zip(tail.items(), grads)}
            if not train:
                tail = {n: p.detach().requires_grad_() for n, p in tail.items()}
            if on_step:
                on_step(k, [float(loss.detach())])
            pause()
    with phase("head"), torch.set_grad_enabled(train):
        last = view_loss(tail)
        if not train and steps and (stopped or diverged(last.detach(), curve[0])):
            stopped, tail, last = True, best, torch.tensor(best_loss)
        curve.append(last.detach())
        fast = adapted(tail if train else {n: p.detach() for n, p in tail.items()})
    curve = torch.stack(curve).view(1, -1)
    path = path + [fast] if trajectory else None
    return Adapted(fast, curve[:, 0], curve[:, -1], steps, path, torch.tensor([stopped]), "fine-tune", curve)


VIEW_IMAGES = 2000  # augmented images a fine-tune step sees at most, unless that leaves fewer than 4 views


def tune_views(model, n_support: int) -> int:
    """How many augmented copies of an n-image support set the fine-tune loop makes: the base's
    `tune_views`, fewer for large support sets (a step sees at most VIEW_IMAGES images), never
    fewer than 4. More views help most where there is least to learn from (1-shot: 4 -> 16
    views, +6 points on the glyphs' validation scripts; docs/experiments.md)."""
    return min(model.tune_views, max(4, VIEW_IMAGES // n_support))


def diverged(loss: torch.Tensor, loss_before: torch.Tensor) -> torch.Tensor:
    """A support loss that is no longer finite or rose far above where it started."""
    return ~torch.isfinite(loss) | (loss > 10 * loss_before + 1)


def pick(mask: torch.Tensor, a: dict, b: dict) -> dict:
    """Per task: a where mask, else b."""
    return {n: torch.where(mask.view(-1, *[1] * (b[n].dim() - 1)), a[n], b[n]) for n in b}


@torch.inference_mode()
def predict(model: Base, fast: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of one adapted task on inputs x [Q, *shape]: logits [Q, N] or values [Q, out]."""
    return model.fast_forward(fast, model.embed_adapted(x, fast).unsqueeze(0))[0]
