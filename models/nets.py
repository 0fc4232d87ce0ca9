"""The base networks. Each splits into a frozen part (`embed`, run once per support
set) and fast weights (`init_fast`, `fast_forward`) that the inner loop adapts, with
learned per-step, per-element step sizes (`step_sizes`, φ); Conv4 can also adapt its
last block (`tail`, with `tune_step_sizes`).

Every fast-weight tensor carries a leading task dimension T so that a batch of
tasks adapts in one pass (meta-training) and serving is the case T = 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap


class Base(nn.Module):
    """What `adapt` needs from a network. Subclasses set `task`, `input_shape`,
    `max_ways` and fill `step_sizes` with one [steps, *broadcastable] tensor per
    fast weight."""

    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]
    max_ways: int = 0
    support_shifts: bool = False  # a support image's embedding: the mean over it and its one-pixel shifts

    def __init__(self, steps: int, step_size: float):
        super().__init__()
        self.max_steps = self.default_steps = steps
        self.init_step_size = step_size
        self.step_sizes = nn.ParameterDict()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: [B, *input_shape] -> [B, D]."""
        raise NotImplementedError

    def embed_support(self, x: torch.Tensor, trunk: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding of support inputs, which `adapt` computes once per task: the mean of `embed`
        over their `support_views`, embedded one view at a time (the service's largest support set,
        `max_support` 500 images, peaks at the memory of one plain pass). `trunk`, the plain inputs'
        trunk features where `auto`'s choice already computed them (`Conv4.look`), stands in for the
        plain view's trunk pass: the same values, once."""
        views = self.support_views(x)
        return torch.stack(
            [self.tail(trunk) if k == PLAIN and trunk is not None else self.embed(v) for k, v in enumerate(views)]
        ).mean(0)

    def support_views(self, x: torch.Tensor) -> torch.Tensor:
        """The views a support image's prototype averages over: [V, B, ...], the plain one at PLAIN."""
        return shifted_views(x) if self.support_shifts else x.unsqueeze(0)

    def init_fast(self, feats: torch.Tensor, y: torch.Tensor, n_ways: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fast_forward(self, fast: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss per task: out [T, S, ...], y [T, S, ...] -> [T]."""
        if self.task == "classification":
            return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)
        return ((out - y) ** 2).flatten(1).mean(1)

    def step_size(self, name: str, step: int) -> torch.Tensor:
        return self.step_sizes[name][step]

    def embed_adapted(self, x: torch.Tensor, fast: dict[str, torch.Tensor]) -> torch.Tensor:
        """The embedding under an adaptation: `finish(shared(x), fast)`."""
        return self.finish(self.shared(x), fast)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The part of the embedding that no adaptation changes, which the predictor runs
        once for the inputs of every adaptation of the base together."""
        return self.embed(x)

    def finish(self, h: torch.Tensor, fast: dict[str, torch.Tensor]) -> torch.Tensor:
        """The rest of the embedding, under one adaptation's fast weights."""
        return h

    def to_stored(self, fast: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors an adaptation is stored as (`from_stored` inverts it)."""
        return fast

    def from_stored(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return stored


class PrototypeHead:
    """Fast weights of a linear head built per task from the class prototypes of the support
    embeddings (Proto-MAML: W_k = 2 c_k, b_k = -|c_k|^2, the prototype classifier by squared
    distance): any N from 2 to `max_ways`, any labels, unequal shots."""

    def init_fast(self, feats, y, n_ways):
        onehot = F.one_hot(y, n_ways).to(feats.dtype)  # [T, S, N]
        protos = onehot.transpose(1, 2) @ feats / onehot.sum(1).unsqueeze(-1)  # [T, N, D]
        return {"weight": 2 * protos, "bias": -(protos**2).sum(-1)}

    def fast_forward(self, fast, feats):
        return torch.baddbmm(fast["bias"].unsqueeze(1), feats, fast["weight"].transpose(1, 2))


class Conv4(PrototypeHead, Base):
    """The image base: four 3x3 conv blocks (conv, group norm, ReLU, 2x2 max-pool) over
    `in_channels` x `size` x `size` images, then the mean over what is left of the map
    (nothing to average at 28 pixels: 28 -> 14 -> 7 -> 3 -> 1), a `channels`-wide
    embedding. Group norm normalises each image on its own, so a prediction never
    depends on the other images in the batch.

    Two inner loops:
    - `fast` (ANIL): only a linear head adapts, built per task from the class prototypes
      of the support embeddings (Proto-MAML: W_k = 2 c_k, b_k = -|c_k|^2, the prototype
      classifier by squared distance), so any N from 2 to `max_ways`, any labels and
      unequal shots work; the embedding runs once per support set.
    - `fine-tune`: the last block (the `tail`: conv and group norm, 37k weights) adapts
      too, on `tune_views` augmented copies of the support set (`adapt.tune_views`), with per-step step sizes
      per tensor (`tune_step_sizes`: hand-set to 0.2 in the committed base, because meta-learning
      them with θ frozen did not beat that on validation, docs/experiments.md); the first three blocks
      (the `trunk`) run once per image and stay shared, so predictions of fine-tuned
      and fast adaptations of one base still share most of their forward pass.

    With `support_shifts`, a support image's embedding is the mean over the image and its
    four one-pixel shifts (zero-filled): a prototype that a drawer's pixel-level placement
    moves less. It costs five embeddings per support image and nothing per prediction."""

    task = "classification"
    TAIL = {  # fast-weight name -> parameter of the last block
        "tail.conv.weight": "body.12.weight",
        "tail.conv.bias": "body.12.bias",
        "tail.norm.weight": "body.13.weight",
        "tail.norm.bias": "body.13.bias",
    }

    def __init__(
        self,
        channels: int = 64,
        groups: int = 8,
        steps: int = 10,
        step_size: float = 0.1,
        max_ways: int = 50,
        support_shifts: bool = False,
        in_channels: int = 1,
        size: int = 28,
        tune_steps: int = 20,
        tune_views: int = 4,
        tune_step_size: float = 0.2,
    ):
        super().__init__(steps, step_size)
        self.max_ways, self.support_shifts = max_ways, support_shifts
        self.input_shape = (in_channels, size, size)
        self.tune_steps, self.tune_views = tune_steps, tune_views
        blocks, c_in = [], in_channels
        for _ in range(4):
            blocks += [nn.Conv2d(c_in, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU()]
            blocks += [nn.MaxPool2d(2)]
            c_in = channels
        # the reference definition, which `embed` computes faster
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.blocks = tuple(zip(self.body[0::4], self.body[1::4]))  # (conv, norm) x 4, not registered twice
        self.dim = channels
        self.step_sizes["weight"] = nn.Parameter(torch.full((steps, 1, self.dim), step_size))
        self.step_sizes["bias"] = nn.Parameter(torch.full((steps, 1), step_size))
        self.tune_step_sizes = nn.ParameterDict(
            {key(n): nn.Parameter(torch.full((tune_steps,), tune_step_size)) for n in self.TAIL}
        )

    def embed(self, x):
        """`self.body(x)`, on the faster path for the job: the plain layers when a
        gradient will flow back through them (their backward is twice as fast as the
        rewritten path's), `embed_inference` otherwise (serving, evaluation)."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.body.parameters())):
            return self.body(x)
        return self.embed_inference(x)

    def embed_inference(self, x):
        return self.tail(self.trunk(x))

    def trunk(self, x):
        """The first three blocks (`stages`)."""
        *_, h = self.stages(x)
        return h

    def stages(self, x):
        """The first three blocks' outputs in turn, rewritten for forward-only CPU speed: the
        first conv as a matmul over 3x3 patches, and 2x2 max-pooling as the max of four strided
        views, taken before the ReLU (they commute), where PyTorch's NCHW max_pool2d and
        few-channel conv are slow (docs/experiments.md has the figures)."""
        first = self.blocks[0][0]
        patches = F.unfold(x, 3, padding=1)  # [B, C*9, H*W]
        h = (first.weight.flatten(1) @ patches + first.bias.unsqueeze(1)).unflatten(2, x.shape[-2:])
        for i, (conv, norm) in enumerate(self.blocks[:3]):
            h = F.relu(pool2x2(norm(conv(h) if i else h)))
            yield h

    def low_level(self, x):
        """Per image, each channel's mean and spread over the first two blocks' maps: [B, 4 * channels].
        How the base sees strokes, edges and texture, before anything specific to a class: what the
        `auto` mode compares with the base's training images (models/familiarity.py)."""
        return self.look(x)[0]

    def look(self, x):
        """-> (`low_level(x)`, `trunk(x)`) from one pass of the three blocks: `auto` reads the first,
        and the loop it picks takes the second instead of running the plain support through them again."""
        *early, h = self.stages(x)
        return torch.cat([s for e in early for s in (e.mean((-2, -1)), e.flatten(2).std(-1))], 1), h

    def tail(self, h, fast: dict | None = None):
        """The last block on trunk features h, with its weights from `fast` where given
        (one adaptation's tail, without the task dimension) -> [B, dim]."""
        conv, norm = self.blocks[3]
        w = lambda name, p: p if fast is None or name not in fast else fast[name]
        h = F.conv2d(h, w("tail.conv.weight", conv.weight), w("tail.conv.bias", conv.bias), padding=1)
        h = F.group_norm(
            h, norm.num_groups, w("tail.norm.weight", norm.weight), w("tail.norm.bias", norm.bias), norm.eps
        )
        return F.relu(pool2x2(h)).mean((-2, -1))

    def tail_params(self) -> dict[str, torch.Tensor]:
        named = dict(self.named_parameters())
        return {n: named[p] for n, p in self.TAIL.items()}

    def shared(self, x):
        return self.trunk(x)

    def finish(self, h, fast):
        return self.tail(h, {n: fast[n][0] for n in self.TAIL if n in fast})

    def tune_step_size(self, name: str, step: int) -> torch.Tensor:
        return self.tune_step_sizes[key(name)][step]

    def to_stored(self, fast):
        """What Redis keeps of an adaptation: the head as it is; a tail as its change from θ,
        the conv weight's in 8 bits with a scale per output channel and the rest in half
        precision (38 KB where the tensors would take 148 KB in full)."""
        if "tail.conv.weight" not in fast:
            return fast
        theta = {n: p.detach() for n, p in self.tail_params().items()}
        out = {n: v for n, v in fast.items() if n not in theta}
        out |= {n: (fast[n] - theta[n]).half() for n in theta if n != "tail.conv.weight"}
        delta = fast["tail.conv.weight"] - theta["tail.conv.weight"]  # [1, out, in, 3, 3]
        scale = delta.abs().amax((2, 3, 4), keepdim=True).clamp(min=1e-12) / 127
        out["tail.conv.weight.q"] = torch.round(delta / scale).to(torch.int8)
        out["tail.conv.weight.scale"] = scale.float()
        return out

    def from_stored(self, stored):
        if "tail.conv.weight.q" not in stored:
            return stored
        theta = {n: p.detach() for n, p in self.tail_params().items()}
        fast = {n: v for n, v in stored.items() if not n.startswith("tail.")}
        fast |= {n: theta[n] + stored[n].float() for n in theta if n != "tail.conv.weight"}
        q, scale = stored["tail.conv.weight.q"], stored["tail.conv.weight.scale"]
        fast["tail.conv.weight"] = theta["tail.conv.weight"] + q.float() * scale
        return fast


def key(name: str) -> str:
    """A fast weight's name as a ParameterDict key (no dots)."""
    return name.replace(".", "_")


SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (dx, dy) in pixels
PLAIN = SHIFTS.index((0, 0))  # the view that is the image itself


def shifted_views(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [len(SHIFTS), B, C, H, W]: x moved by each shift, paper (0) filling in."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return torch.stack([padded[..., 1 - dy : 1 - dy + H, 1 - dx : 1 - dx + W] for dx, dy in SHIFTS])


def pool2x2(h: torch.Tensor) -> torch.Tensor:
    """max_pool2d(h, 2) (floor mode) as the max of four strided views."""
    H, W = h.shape[-2] // 2 * 2, h.shape[-1] // 2 * 2
    return torch.maximum(
        torch.maximum(h[..., 0:H:2, 0:W:2], h[..., 0:H:2, 1:W:2]),
        torch.maximum(h[..., 1:H:2, 0:W:2], h[..., 1:H:2, 1:W:2]),
    )


class SinusoidMLP(Base):
    """MAML's regression network, 1-40-40-1 with ReLU. With adapt="all" every
    weight adapts (the embedding is the identity and the fast weights start from
    θ itself); with adapt="head" only the last layer does, on features computed once."""

    task = "regression"
    input_shape = (1,)

    def __init__(self, hidden: int = 40, steps: int = 10, step_size: float = 0.01, adapt: str = "all"):
        super().__init__(steps, step_size)
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.scope = adapt
        for name, p in self.fast_module.named_parameters():
            self.step_sizes[name.replace(".", "_")] = nn.Parameter(torch.full((steps, *p.shape), step_size))

    @property
    def fast_module(self) -> nn.Module:
        return self.net[4:] if self.scope == "head" else self.net

    def embed(self, x):
        return self.net[:4](x) if self.scope == "head" else x

    def init_fast(self, feats, y, n_ways):
        return {n: p.expand(feats.shape[0], *p.shape) for n, p in self.fast_module.named_parameters()}

    def fast_forward(self, fast, feats):
        return vmap(lambda p, x: functional_call(self.fast_module, p, (x,)))(fast, feats)

    def step_size(self, name, step):
        return self.step_sizes[name.replace(".", "_")][step]


ARCHITECTURES = {"conv4": Conv4, "mlp": SinusoidMLP}
