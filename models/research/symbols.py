"""The generalist symbol base's training data: every kind of symbol the project may train on.

Three sources, every class drawn by 20 drawers, prepared as served images are
(`square_gray`, `frame_ink`), each grouped for within-group episodes:

- handwriting: the Omniglot train and val alphabets (never the test alphabets);
- typeset: the glyph benchmark's train scripts (Armenian, Hebrew), further Noto scripts,
  Latin letters and digits in every Noto typeface, and Noto's symbol and arrow fonts. No
  script of the glyph benchmark's val or test splits, no Omniglot alphabet outside train+val
  and none of Lake et al.'s 20 evaluation alphabets (`EXCLUDED`) is drawn;
- silhouettes: random shapes (star polygons, smooth blobs, unions of primitives; some with
  a hole, some outlined), each class one shape, each drawer a new angle, size, aspect,
  shade and rendering resolution.

Validation (choosing the checkpoint) is the glyph benchmark's val scripts; its test
scripts, the thin family and the Omniglot test alphabets are the evaluation. Rendered
once into `.cache/` (about 25 seconds), its SHA-256 recorded in the base's JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from ..preprocess import PREPROCESSING, frame_ink, levels_to_tensor, square_gray
from . import glyphs, omniglot
from .omniglot import CACHE_DIR, Omniglot

VERSION = "symbols-v1"
OMNIGLOT_SPLIT = "train+val"
# Noto scripts in no evaluation split (their letters are the characters whose Unicode names start with the
# script's name, spaced: "KAYAH LI LETTER KA")
SCRIPTS = """
    Adlam Bamum BassaVah Batak Bhaiksuki Brahmi Buginese Buhid Carian Chakma Cham Coptic Cypriot Deseret
    Elbasan Gothic Grantha Hanunoo Javanese Kaithi KayahLi Kharoshthi Khojki Lepcha Limbu LinearB Lisu Lycian
    Lydian Mandaic Medefaidrin Miao Modi Mro Newa NKo NewTaiLue OlChiki OldHungarian OldItalic OldPermic
    OldPersian OldSouthArabian OldTurkic Osage Osmanya Phoenician Rejang Runic Samaritan Saurashtra Sharada
    Shavian Siddham Sundanese Takri TaiLe TaiViet Tifinagh Tirhuta Ugaritic Vai Wancho WarangCiti Yi
""".split()  # noqa: SIM905 (a list literal would take 65 lines)
LATIN = ["NotoSans", "NotoSerif", "NotoSansMono", "NotoSansDisplay", "NotoSerifDisplay"]
SYMBOL_FONTS = {"Symbols": ["NotoSansSymbols"], "Symbols2": ["NotoSansSymbols2"], "Math": ["NotoSansMath"]}
PER_SCRIPT = 40
PER_SYMBOL_FONT = 120
# never drawn: the glyph benchmark's val and test scripts, Omniglot's test alphabets, and the scripts of
# Lake et al.'s 20 evaluation alphabets (Angelic, Atemayar, Atlantean, Aurek-Besh, Keble, Tengwar and ULOG
# have no Unicode script)
EXCLUDED = {
    "glyph benchmark": glyphs.SPLITS["val"] + glyphs.SPLITS["test"],
    "Omniglot test": omniglot.SPLITS["test"],
    "Lake's evaluation alphabets": (
        "Avestan",
        "Ethiopic",
        "Glagolitic",
        "Gurmukhi",
        "Kannada",
        "Arabic",
        "Malayalam",
        "MeeteiMayek",
        "Mongolian",
        "Cyrillic",
        "Oriya",
        "SylotiNagri",
        "Syriac",
        "Tibetan",
    ),
}
SHAPE_GROUPS, SHAPES_PER_GROUP = 40, 20
SHAPE_KINDS = ("polygon", "blob", "compound")


def _named(script: str):
    prefix = "NKO" if script == "NKo" else re.sub(r"(?<=[a-z])(?=[A-Z])", " ", script).upper()
    return lambda c: glyphs.is_letter(c) and unicodedata.name(chr(c), "").startswith(prefix + " ")


def _symbol(c: int) -> bool:
    name = unicodedata.name(chr(c), "")
    return unicodedata.category(chr(c)) in ("So", "Sm") and "GREEK" not in name and "CYRILLIC" not in name


def typeset_sets() -> list[tuple[dict, int, object]]:
    """The typeset groups as glyphs.draw_scripts arguments: (scripts, characters per group, filter)."""
    every = [(0x21, 0x10FFFF)]
    sets = [({k: glyphs.SCRIPTS[k] for k in glyphs.SPLITS["train"]}, PER_SCRIPT, glyphs.is_letter)]
    sets += [({name: (every, [f"NotoSans{name}", f"NotoSerif{name}"])}, PER_SCRIPT, _named(name)) for name in SCRIPTS]
    sets += [
        ({"LatinUpper": ([(0x41, 0x5A)], LATIN)}, 26, glyphs.is_letter),
        ({"LatinLower": ([(0x61, 0x7A)], LATIN)}, 26, glyphs.is_letter),
        ({"Digits": ([(0x30, 0x39)], LATIN)}, 10, lambda c: True),
    ]
    sets += [({name: (every, prefixes)}, PER_SYMBOL_FONT, _symbol) for name, prefixes in SYMBOL_FONTS.items()]
    return sets


def shape(rng: random.Random, kind: str) -> dict:
    """One silhouette class: its outline(s) on the unit disc, whether it has a hole, whether it is outlined."""
    if kind == "polygon":
        k = rng.randint(3, 9)
        angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(k))
        parts = [[(rng.uniform(0.35, 1.0), a) for a in angles]]
    elif kind == "blob":
        coef = [(rng.uniform(0, 0.35 / j), rng.uniform(0, 2 * math.pi)) for j in range(1, 6)]
        r = lambda t: 0.7 + sum(a * math.cos(j * t + p) for j, (a, p) in enumerate(coef, 1))
        parts = [[(max(0.15, r(t)), t) for t in (2 * math.pi * i / 48 for i in range(48))]]
    else:  # a union of 2-3 primitives at offsets
        parts = []
        for _ in range(rng.randint(2, 3)):
            cx, cy, s = rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.45), rng.uniform(0.3, 0.6)
            n = rng.choice((3, 4, 24))  # triangle, quadrilateral, ellipse
            rot, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0)
            pts = [(s * math.cos(2 * math.pi * i / n), s * stretch * math.sin(2 * math.pi * i / n)) for i in range(n)]
            pts = [
                (cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)) for x, y in pts
            ]
            parts.append([(math.hypot(x, y), math.atan2(y, x)) for x, y in pts])
    return {"parts": parts, "hole": rng.random() < 0.3, "outline": rng.random() < 0.25}


def draw_shape(spec: dict, rng: random.Random) -> Image.Image:
    """One drawer's rendering of a silhouette on glyphs' canvas: angle, size, aspect, ink shade and paper vary,
    drawn at a resolution from 16 to 105 pixels and brought to 105 (bilinear), as the glyphs are."""
    res = round(math.exp(rng.uniform(math.log(16), math.log(glyphs.CANVAS))))
    turn, size, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.25, 0.45) * res, rng.uniform(0.85, 1.15)
    ink, paper = rng.randint(0, 110), rng.randint(230, 255)
    img = Image.new("L", (res, res), paper)
    d = ImageDraw.Draw(img)
    c = res / 2
    xy = lambda pts, k=1.0: [
        (c + k * size * aspect * r * math.cos(a + turn), c + k * size * r * math.sin(a + turn) / aspect) for r, a in pts
    ]
    width = max(1, round(res * rng.uniform(0.03, 0.07)))
    for part in spec["parts"]:
        d.polygon(xy(part), fill=None if spec["outline"] else ink, outline=ink, width=width if spec["outline"] else 1)
    if spec["hole"] and not spec["outline"]:
        d.polygon(xy(spec["parts"][0], 0.4), fill=paper)
    return img if res == glyphs.CANVAS else img.resize((glyphs.CANVAS, glyphs.CANVAS), Image.Resampling.BILINEAR)


def draw_all(seed: int = 0):
    """Yield (source, "GROUP/CLASS", drawer, image) for the typeset and silhouette sources."""
    for k, (scripts, per, keep) in enumerate(typeset_sets()):
        for name, img in glyphs.draw_scripts(scripts, seed + k, per_script=per, keep=keep):
            group, char, drawer = name.split("/")
            yield "typeset", f"{group}/{char}", int(drawer), img
    rng = random.Random(seed)
    for g in range(SHAPE_GROUPS):
        kind = SHAPE_KINDS[g % len(SHAPE_KINDS)]
        for c in range(SHAPES_PER_GROUP):
            spec = shape(rng, kind)
            for d in range(glyphs.DRAWERS):
                yield "silhouettes", f"{kind}{g:02d}/c{c:02d}", d, draw_shape(spec, rng)


@dataclass
class Symbols:
    """All training images as one Omniglot-like set (`ds`: class names "GROUP/CLASS", 20 drawers each) and
    the groups of each source (episodes are drawn within one group)."""

    ds: Omniglot
    sources: dict[str, list[str]]
    sha256: str


def load(cache_dir: Path = CACHE_DIR, seed: int = 0) -> Symbols:
    """Render the typeset and silhouette sources once (cached), and join them to Omniglot's train+val."""
    key = hashlib.sha256(json.dumps([VERSION, seed, PREPROCESSING]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{VERSION}-{key}.safetensors"
    if path.exists():
        images = load_file(path)["images"]
        names = json.loads(path.with_suffix(".json").read_text())
    else:
        names, drawn = {"source": [], "class": [], "drawer": []}, []
        for source, cls, drawer, img in draw_all(seed):
            names["source"].append(source)
            names["class"].append(cls)
            names["drawer"].append(drawer)
            drawn.append(square_gray(img))
        images = levels_to_tensor(frame_ink(drawn))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": images}, str(path.with_suffix(".tmp")))
        path.with_suffix(".json").write_text(json.dumps(names))
        path.with_suffix(".tmp").rename(path)
    om = omniglot.load()
    keep = om.in_split(OMNIGLOT_SPLIT)
    classes = sorted(set(names["class"]))
    omni_classes = sorted({om.char_names[int(c)] for c in om.char[keep].unique()})
    char_names = omni_classes + classes
    index = {c: i for i, c in enumerate(char_names)}
    ds = Omniglot(
        images=torch.cat([om.images[keep], images]),
        char=torch.tensor([index[om.char_names[int(c)]] for c in om.char[keep]] + [index[c] for c in names["class"]]),
        drawer=torch.cat([om.drawer[keep], torch.tensor(names["drawer"])]),
        char_names=char_names,
        files=[f for f, k in zip(om.files, keep.tolist()) if k]
        + [f"{c}/{d:02d}" for c, d in zip(names["class"], names["drawer"])],
    )
    sources = {"handwriting": sorted(omniglot.alphabets_of(OMNIGLOT_SPLIT))}
    for source, cls in zip(names["source"], names["class"]):
        group = cls.split("/")[0]
        if group not in sources.setdefault(source, []):
            sources[source].append(group)
    digest = hashlib.sha256(ds.images.numpy().tobytes()).hexdigest()
    return Symbols(ds, sources, digest)
