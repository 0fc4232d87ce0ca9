"""Your own labelled images as a task family, for `models.train folder` and `models.evaluate folder`.

Layout: ROOT/<class>/*.{png,jpg,jpeg}, or ROOT/<group>/<class>/... where an episode draws all
its classes from one group (as Omniglot's alphabets). Splits are by whole groups when there
are at least three, else by classes, seeded: test and validation take about 15% each, never
fewer than one group (or two classes). Images are prepared by `models.preprocess.prepare`
with the `resize-v1` preprocessing (RGB or gray, the shorter side to the chosen size, the
centre square), the function that prepares the images the base is later sent.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..preprocess import RESIZED, prepare
from .omniglot import CACHE_DIR

SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class FolderData:
    images: torch.Tensor  # [M, C, S, S]
    label: torch.Tensor  # [M]: class index
    classes: list[str]  # "group/class" (group "" without groups)
    groups: list[str]  # per class
    root: Path
    files: list[str]

    def classes_of(self, groups: set[str] | None = None) -> list[int]:
        return [i for i, g in enumerate(self.groups) if groups is None or g in groups]

    def images_of(self, classes: list[int]) -> torch.Tensor:
        """Every image of these classes (indices into `classes`)."""
        return self.images[torch.isin(self.label, torch.tensor(classes))]


def scan(root: Path) -> list[tuple[str, str, Path]]:
    """-> (group, class, image path) for every image; grouped when no image lies one level down."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    grouped = bool(dirs) and all(not any(f.suffix.lower() in SUFFIXES for f in d.iterdir()) for d in dirs)
    found = []
    for d in dirs:
        for cls in sorted(p for p in d.iterdir() if p.is_dir()) if grouped else [d]:
            group = d.name if grouped else ""
            found += [(group, cls.name, f) for f in sorted(cls.iterdir()) if f.suffix.lower() in SUFFIXES]
    if not found:
        raise ValueError(f"{root}: no images in ROOT/<class>/ or ROOT/<group>/<class>/")
    return found


def load(root: Path, size: int, channels: int, cache_dir: Path = CACHE_DIR) -> FolderData:
    """Every image prepared once, then cached by the files' content."""
    if not 28 <= size <= 84 or channels not in (1, 3):
        raise ValueError("size must lie in 28..84 and channels be 1 or 3")
    items = scan(root)
    digest = hashlib.sha256()
    for group, cls, f in items:
        digest.update(f"{group}/{cls}/{f.name}".encode())
        digest.update(f.read_bytes())
    key = hashlib.sha256(json.dumps([digest.hexdigest(), size, channels, RESIZED]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"folder-{key}.safetensors"
    names = sorted({f"{g}/{c}" for g, c, _ in items})
    index = {n: i for i, n in enumerate(names)}
    label = torch.tensor([index[f"{g}/{c}"] for g, c, _ in items])
    if path.exists():
        images = load_file(path)["images"]
    else:
        images = prepare([Image.open(f) for _, _, f in items], {"kind": RESIZED}, [channels, size, size])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": images}, str(path))
    return FolderData(
        images,
        label,
        names,
        [n.split("/")[0] for n in names],
        Path(root),
        [str(f.relative_to(root)) for _, _, f in items],
    )


def content_sha256(data: FolderData) -> str:
    return hashlib.sha256(json.dumps(data.files).encode() + data.images.numpy().tobytes()).hexdigest()


def splits(data: FolderData, seed: int = 0) -> dict[str, list[int]]:
    """train / val / test class indices: whole groups when there are three or more, else classes."""
    rng = random.Random(seed)
    groups = sorted(set(data.groups))
    if len(groups) >= 3:
        rng.shuffle(groups)
        k = max(1, round(0.15 * len(groups)))
        parts = {"test": groups[:k], "val": groups[k : 2 * k], "train": groups[2 * k :]}
        for name, gs in parts.items():
            if max(len(data.classes_of({g})) for g in gs) < 2:
                raise ValueError(
                    f"the {name} split's groups ({', '.join(gs)}) hold one class each: an episode needs a group "
                    "of at least 2 classes; add classes to the groups"
                )
        return {s: data.classes_of(set(g)) for s, g in parts.items()}
    classes = list(range(len(data.classes)))
    if len(classes) < 6:
        raise ValueError(
            f"{len(classes)} classes cannot be split: training, validation and test each need at least 2 "
            "classes, 6 in all; add classes (or folders of them: ROOT/<group>/<class>/)"
        )
    rng.shuffle(classes)
    k = max(2, round(0.15 * len(classes)))
    return {"test": sorted(classes[:k]), "val": sorted(classes[k : 2 * k]), "train": sorted(classes[2 * k :])}


class EpisodeSampler:
    """N-way K-shot episodes of a split's classes, all from one group where there are groups
    (the groups with enough classes)."""

    def __init__(self, data: FolderData, classes: list[int], jitter: bool = False):
        self.data, self.jitter = data, jitter
        self.by_class = {c: (data.label == c).nonzero().flatten() for c in classes}
        self.by_group: dict[str, list[int]] = {}
        for c in classes:
            self.by_group.setdefault(data.groups[c], []).append(c)

    def max_ways(self) -> int:
        return max(len(cs) for cs in self.by_group.values())

    def sample(self, n_way: int, k_shot: int, n_query: int, gen: torch.Generator):
        names = sorted(g for g, cs in self.by_group.items() if len(cs) >= n_way)
        if not names:
            raise ValueError(f"no group of this split has {n_way} classes")
        classes = self.by_group[names[int(torch.randint(len(names), (1,), generator=gen))]]
        picked = [classes[i] for i in torch.randperm(len(classes), generator=gen)[:n_way].tolist()]
        sx, sy, qx, qy = [], [], [], []
        for label, c in enumerate(picked):
            ids = self.by_class[c]
            order = ids[torch.randperm(len(ids), generator=gen)[: k_shot + n_query]]
            sx.append(self.data.images[order[:k_shot]])
            qx.append(self.data.images[order[k_shot:]])
            sy += [label] * k_shot
            qy += [label] * len(order[k_shot:])
        sx, qx = torch.cat(sx), torch.cat(qx)
        if self.jitter:
            from ..augment import affine_jitter

            sx, qx = affine_jitter(sx, gen), affine_jitter(qx, gen)
        return sx, torch.tensor(sy), qx, torch.tensor(qy)


def input_record(size: int, channels: int) -> dict:
    """The `input` of a folder base's JSON: what the service takes and how it prepares it."""
    color = "RGB" if channels == 3 else "grayscale"
    return {
        "kind": "image",
        "shape": [channels, size, size],
        "range": [0.0, 1.0],
        "encodings": ["array", "png", "jpeg"],
        "preprocessing": {
            "kind": RESIZED,
            "description": f"PNG or JPEG of any size: {color} (white behind transparency), the shorter side "
            f"brought to {size} pixels, the centre {size}x{size} square, values in [0, 1] "
            "(models/preprocess.py). Arrays are taken as already prepared.",
        },
    }
