"""Omniglot, minimal background alphabets: loading, caching, splits and episodes.

The two zips beside this package hold 8 distinct alphabets (Greek and Latin are
in both). They are decoded once through `preprocess.frame_ink` (the
function that also serves requests) and cached as a safetensors file. Splits
are by whole alphabets, so test characters (and, while recipes are chosen,
validation characters) come from alphabets the base never saw:

- train: Korean, Latin, Japanese_(katakana), Sanskrit, Tagalog (172 characters)
- val:   Balinese (24): choosing recipes and checkpoints; the committed base's final
         run then meta-trains on train+val with the chosen recipe and schedule
- test:  Greek, Early_Aramaic (46): the evaluation command's figures and the demo
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..augment import affine_jitter
from ..preprocess import PREPROCESSING, SIDE, frame_ink, levels_to_tensor, square_gray

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "omniglot"
ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
SPLITS = {
    "train": ("Korean", "Latin", "Japanese_(katakana)", "Sanskrit", "Tagalog"),
    "val": ("Balinese",),
    "test": ("Greek", "Early_Aramaic"),
}
CACHE_DIR = Path(os.environ.get("RAPID_ADAPT_CACHE", Path(__file__).resolve().parents[2] / ".cache"))


def alphabets_of(split: str) -> tuple[str, ...]:
    """The alphabets of a split, or of several joined by "+" ("train+val": the final recipe's data)."""
    names = split.split("+")
    if unknown := [n for n in names if n not in SPLITS]:
        raise ValueError(f"unknown split {unknown[0]!r}; splits are {', '.join(SPLITS)}, joined by '+'")
    return tuple(a for n in names for a in SPLITS[n])


def data_checksums() -> dict[str, str]:
    return {z: hashlib.sha256((DATA_DIR / z).read_bytes()).hexdigest() for z in ZIPS}


@dataclass
class Omniglot:
    """All drawings in memory: images [M, 1, 28, 28] (ink = 1), and per image
    its character index, its drawer (0..19) and the file name it came from."""

    images: torch.Tensor
    char: torch.Tensor
    drawer: torch.Tensor
    char_names: list[str]  # "Alphabet/characterNN"
    files: list[str]

    @property
    def alphabets(self) -> list[str]:
        return sorted({c.split("/")[0] for c in self.char_names})

    def chars_of(self, alphabets) -> list[int]:
        return [i for i, c in enumerate(self.char_names) if c.split("/")[0] in alphabets]

    def in_split(self, split: str) -> torch.Tensor:
        """[M] bool: which drawings belong to a split's alphabets ("train+val" joins splits)."""
        return torch.isin(self.char, torch.tensor(self.chars_of(alphabets_of(split))))

    def images_of(self, split: str) -> torch.Tensor:
        """Every drawing of a split's alphabets, as drawn."""
        return self.images[self.in_split(split)]


def _read_zips() -> tuple[torch.Tensor, list[str], list[str]]:
    images, names, files = [], [], []
    seen: set[str] = set()
    for z in ZIPS:
        with zipfile.ZipFile(DATA_DIR / z) as zf:
            entries = sorted(n for n in zf.namelist() if n.endswith(".png"))
            alphabets = sorted({n.split("/")[1] for n in entries} - seen)
            for n in entries:
                _, alphabet, character, fname = n.split("/")
                if alphabet in alphabets:
                    images.append(square_gray(Image.open(io.BytesIO(zf.read(n)))))
                    names.append(f"{alphabet}/{character}")
                    files.append(f"{alphabet}/{character}/{fname}")
            seen.update(alphabets)
    return levels_to_tensor(frame_ink(images)), names, files


def load(cache_dir: Path = CACHE_DIR) -> Omniglot:
    """Decode the zips once (a few seconds) and reuse the cached tensors after."""
    key = hashlib.sha256(json.dumps([data_checksums(), SIDE, PREPROCESSING]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"omniglot-{SIDE}-{key}.safetensors"
    if path.exists():
        t = load_file(path)
        meta = json.loads((path.with_suffix(".json")).read_text())
        return Omniglot(t["images"], t["char"], t["drawer"], meta["char_names"], meta["files"])
    images, names, files = _read_zips()
    char_names = sorted(set(names))
    index = {c: i for i, c in enumerate(char_names)}
    ds = Omniglot(
        images=images,
        char=torch.tensor([index[n] for n in names]),
        drawer=torch.tensor([int(f.rsplit("_", 1)[1][:2]) - 1 for f in files]),
        char_names=char_names,
        files=files,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"images": ds.images, "char": ds.char, "drawer": ds.drawer}, str(tmp))
    path.with_suffix(".json").write_text(json.dumps({"char_names": char_names, "files": files}))
    tmp.rename(path)
    return ds


class EpisodeSampler:
    """N-way K-shot episodes with every class drawn from ONE alphabet (Lake et
    al.'s within-alphabet protocol). With `rotations`, each character rotated by
    90/180/270 degrees is a new class (with `flips` also its mirror images: the 8
    symmetries of the square); an episode keeps one variant when the alphabet has
    enough characters. `jitter` adds a small random affine warp. `split` names splits ("train+val") or,
    as a tuple, the alphabets themselves (any set laid out as Omniglot is: `symbols`)."""

    def __init__(
        self,
        ds: Omniglot,
        split: str | tuple[str, ...],
        rotations: bool = False,
        jitter: bool = False,
        flips: bool = False,
        shear: float = 0.0,
    ):
        self.ds, self.jitter, self.shear = ds, jitter, shear
        self.variants = (8 if flips else 4) if rotations else 1
        by_char: dict[int, torch.Tensor] = {}
        order = torch.argsort(ds.char * 100 + ds.drawer)
        for c in self.ds.chars_of(alphabets_of(split) if isinstance(split, str) else split):
            by_char[c] = order[ds.char[order] == c]
        self.by_char = by_char  # char -> 20 image indices, ordered by drawer
        self.alphabets: dict[str, list[int]] = {}
        for c in by_char:
            self.alphabets.setdefault(ds.char_names[c].split("/")[0], []).append(c)

    def sample_ids(self, n_way: int, k_shot: int, n_query: int, gen: torch.Generator):
        """An episode as image indices: -> support [(index, symmetry, label)], query [...]."""
        names = sorted(a for a, cs in self.alphabets.items() if len(cs) * self.variants >= n_way)
        if not names:
            raise ValueError(f"no alphabet in this split has {n_way} classes")
        alphabet = names[int(torch.randint(len(names), (1,), generator=gen))]
        chars = self.alphabets[alphabet]
        if self.variants == 1:
            classes = [(chars[i], 0) for i in torch.randperm(len(chars), generator=gen)[:n_way]]
        elif len(chars) >= n_way:
            rot = int(torch.randint(self.variants, (1,), generator=gen))
            classes = [(chars[i], rot) for i in torch.randperm(len(chars), generator=gen)[:n_way]]
        else:
            pool = [(c, r) for c in chars for r in range(self.variants)]
            classes = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:n_way]]
        support, query = [], []
        for label, (c, rot) in enumerate(classes):
            order = torch.randperm(20, generator=gen)[: k_shot + n_query]
            idx = self.by_char[c][order].tolist()
            support += [(i, rot, label) for i in idx[:k_shot]]
            query += [(i, rot, label) for i in idx[k_shot:]]
        return support, query

    def sample(self, n_way: int, k_shot: int, n_query: int, gen: torch.Generator):
        """-> support x [N*K,1,28,28], y [N*K], query x [N*Q,...], y [N*Q]."""
        support, query = self.sample_ids(n_way, k_shot, n_query, gen)
        sx, sy = self.tensors(support, gen)
        qx, qy = self.tensors(query, gen)
        return sx, sy, qx, qy

    def tensors(self, ids, gen: torch.Generator):
        x = torch.stack([symmetry(self.ds.images[i], v) for i, v, _ in ids])
        if self.jitter:
            x = affine_jitter(x, gen, shear=self.shear)
        return x, torch.tensor([label for *_, label in ids])


def symmetry(img: torch.Tensor, v: int) -> torch.Tensor:
    """The v-th of the 8 symmetries of the square: rotation by 90*(v%4) degrees, then a mirror if v >= 4."""
    img = torch.rot90(img, v % 4, dims=(1, 2))
    return img.flip(-1) if v >= 4 else img


def make_runs(ds: Omniglot, split: str, out: Path, n_runs: int = 20, seed: int = 0) -> Path:
    """Write Lake et al.'s one-shot run format from a split's alphabets: runNN/
    training/classYY.png and test/itemXX.png from two different drawers, and
    class_labels.txt mapping each test item to its training class."""
    gen = torch.Generator().manual_seed(seed)
    sampler = EpisodeSampler(ds, split)
    out = Path(out)
    for r in range(1, n_runs + 1):
        run = out / f"run{r:02d}"
        (run / "training").mkdir(parents=True, exist_ok=True)
        (run / "test").mkdir(parents=True, exist_ok=True)
        names = sorted(a for a, cs in sampler.alphabets.items() if len(cs) >= 20)
        chars = sampler.alphabets[names[int(torch.randint(len(names), (1,), generator=gen))]]
        picked = [chars[i] for i in torch.randperm(len(chars), generator=gen)[:20]]
        d_train, d_test = torch.randperm(20, generator=gen)[:2].tolist()
        items = torch.randperm(20, generator=gen).tolist()
        lines = []
        for k, c in enumerate(picked):
            idx = sampler.by_char[c]
            (run / "training" / f"class{k + 1:02d}.png").write_bytes(original_png(ds.files[idx[d_train]]))
            (run / "test" / f"item{items[k] + 1:02d}.png").write_bytes(original_png(ds.files[idx[d_test]]))
            lines.append((items[k] + 1, k + 1))
        lines.sort()
        (run / "class_labels.txt").write_text(
            "".join(f"run{r:02d}/test/item{i:02d}.png run{r:02d}/training/class{k:02d}.png\n" for i, k in lines)
        )
    return out


def original_png(file: str) -> bytes:
    """The original 105x105 PNG bytes of `Omniglot.files[i]`, as a client would send them."""
    alphabet = file.split("/")[0]
    for z in ZIPS:
        with zipfile.ZipFile(DATA_DIR / z) as zf:
            name = f"{z[:-4]}/{file}"
            if name in zf.NameToInfo:
                return zf.read(name)
    raise KeyError(f"{file} (alphabet {alphabet}) is not in the Omniglot zips")


def input_record() -> dict:
    """The `input` of an Omniglot base's JSON: what the service takes and how it prepares it."""
    return {
        "kind": "image",
        "shape": [1, SIDE, SIDE],
        "range": [0.0, 1.0],
        "encodings": ["array", "png", "jpeg"],
        "preprocessing": {
            "kind": PREPROCESSING,
            "description": "PNG or JPEG of any size: grayscale, ink dark on light (an image with a dark frame is "
            "inverted), the longer side brought to Omniglot's 105-pixel canvas and padded to a square, a 112-pixel "
            "window centred on the ink's centre of mass (moved only as far as keeps every stroke in) reduced 4x4 "
            "to 28x28, ink 1.0 on paper 0.0 (models/preprocess.py). Arrays are taken as already prepared.",
        },
    }
