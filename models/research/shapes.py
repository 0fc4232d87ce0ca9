"""A toy folder data set for trying the folder family: `python -m models.research.shapes OUT`.

OUT/<group>/<class>/NN.png, RGB: each group is a palette, each class a shape (ellipse,
rectangle, triangle, cross, ring, bar, diamond, chevron) in one of the palette's colours,
each image that shape at a random place, size and angle on a noisy background. Generated
from a seed, so a test or a walkthrough can make the same one anywhere."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

PALETTES = {
    "warm": [(200, 40, 30), (230, 140, 20), (170, 60, 120)],
    "cool": [(30, 90, 200), (20, 150, 140), (90, 60, 180)],
    "earth": [(110, 80, 40), (60, 120, 50), (150, 110, 70)],
}
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "bar", "diamond", "chevron")


def polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {
        "triangle": [(0, -1), (0.87, 0.5), (-0.87, 0.5)],
        "diamond": [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)],
        "chevron": [(-1, -0.4), (0, 0.5), (1, -0.4), (1, 0.1), (0, 1), (-1, 0.1)],
        "bar": [(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)],
        "rectangle": [(-0.8, -0.6), (0.8, -0.6), (0.8, 0.6), (-0.8, 0.6)],
    }[kind]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in corners]


def draw(kind: str, color: tuple, rng: random.Random, size: int = 96) -> Image.Image:
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(40):  # background speckle
        x, y = rng.randrange(size), rng.randrange(size)
        d.point((x, y), fill=tuple(max(0, v - rng.randint(20, 60)) for v in bg))
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15) * size, size / 2 + rng.uniform(-0.15, 0.15) * size
    angle = rng.uniform(-0.5, 0.5)
    shade = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in color)
    if kind == "ellipse":
        d.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=shade)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=shade, width=max(2, int(r / 3)))
    elif kind == "cross":
        d.line((cx - r, cy, cx + r, cy), fill=shade, width=max(2, int(r / 3)))
        d.line((cx, cy - r, cx, cy + r), fill=shade, width=max(2, int(r / 3)))
    else:
        d.polygon(polygon(kind, cx, cy, r, angle), fill=shade)
    return img


def write(out: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Write the set: 3 groups x 8 classes x per_class images."""
    rng = random.Random(seed)
    for group, colors in PALETTES.items():
        for k, kind in enumerate(SHAPES):
            folder = Path(out) / group / f"{kind}-{k % len(colors)}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                draw(kind, colors[k % len(colors)], rng).save(folder / f"{n:02d}.png")
    return Path(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m models.research.shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write(a.out, a.per_class, a.seed))
