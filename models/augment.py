"""Random image augmentations on [B, C, H, W] tensors (ink 1, paper 0), drawn from a
seeded generator so that an adaptation done twice augments identically.

Meta-training jitters its episodes with `affine_jitter`; the fine-tuning inner loop
augments the support set with `affine_jitter` and `stroke_width`, so that a handful
of examples teach the network what may vary within a class (placement, size, slant,
stroke weight) without being able to memorise the pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine_jitter(x: torch.Tensor, gen: torch.Generator, degrees=10.0, scale=0.1, shift=0.1, shear=0.0) -> torch.Tensor:
    """Small random rotation, scale, shift (and with `shear`, a horizontal shear) per
    image (bilinear, zero = paper). The random numbers are drawn on the CPU."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=gen) * 2 - 1
    a = u() * math.radians(degrees)
    s = 1 + u() * scale
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    k = u() * shear if shear else torch.zeros(n)  # no draw at 0: the same stream as before shear existed
    theta = torch.stack(
        [torch.stack([cos, cos * k - sin, u() * shift], 1), torch.stack([sin, sin * k + cos, u() * shift], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def stroke_width(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Per image, with probability p/2 each: strokes one pixel bolder (a 3x3 max filter)
    or one pixel thinner (a 3x3 min filter); otherwise unchanged."""
    u = torch.rand(x.shape[0], generator=gen).to(x.device).view(-1, 1, 1, 1)
    bolder = F.max_pool2d(x, 3, 1, 1)
    thinner = -F.max_pool2d(-x, 3, 1, 1)
    return torch.where(u < p / 2, bolder, torch.where(u < p, thinner, x))


def support_views(x: torch.Tensor, gen: torch.Generator, n_views: int, width_p: float = 0.67) -> torch.Tensor:
    """n_views augmented copies of a support set [S, C, H, W] -> [n_views * S, C, H, W]."""
    return torch.cat([stroke_width(affine_jitter(x, gen), gen, width_p) for _ in range(n_views)])
