"""Episodes of Omniglot drawn as if in another domain, to meta-train the fine-tuning
step sizes: with the base's own training data the base's features already fit, the
tail has nothing to learn, and step sizes learned there would be near zero.

Each episode gets one random style, and each image a variation of it, as drawers or
typefaces vary within a data set: a stroke weight (as drawn, or bolder by one or two
pixels), an ink strength (60 to 100%), a resolution (rendered at 12 to 28 pixels and
brought back to 28: a coarse scan), a size (0.8 to 1.25 times), then the usual small
affine jitter. The ranges were set once by looking at samples (strokes cannot be made
thinner: at 28 pixels Omniglot's are about two pixels wide), before any validation
figure existed, and have not been tuned."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import affine_jitter


def bolder(x: torch.Tensor, times: int) -> torch.Tensor:
    """Strokes `times` pixels bolder (3x3 max filters)."""
    for _ in range(times):
        x = F.max_pool2d(x, 3, 1, 1)
    return x


def draw_in_style(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One episode's images [B, 1, H, W] (support and queries together) in a random style."""
    u = lambda lo, hi, n=1: lo + (hi - lo) * torch.rand(n, generator=gen)
    n = x.shape[0]
    weight = int(torch.randint(0, 2, (1,), generator=gen))  # the episode's stroke weight: as drawn or bolder
    per_image = weight + torch.randint(0, 2, (n,), generator=gen)  # each image's own: 0 to 2 pixels bolder
    x = torch.cat([bolder(img.unsqueeze(0), int(t)) for img, t in zip(x, per_image)])
    x = x * u(0.6, 1.0, n).view(-1, 1, 1, 1)  # ink strength
    side = x.shape[-1]
    res = int(u(12, side + 1).item())
    if res < side:  # a coarse scan: averaged down, bilinear back up
        x = F.interpolate(F.interpolate(x, size=res, mode="area"), size=side, mode="bilinear", align_corners=False)
    x = zoomed(x, float(u(0.8, 1.25).item()))
    return affine_jitter(x, gen, shear=0.2).clamp(0, 1)


def zoomed(x: torch.Tensor, factor: float) -> torch.Tensor:
    theta = torch.tensor([[1 / factor, 0.0, 0.0], [0.0, 1 / factor, 0.0]]).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
