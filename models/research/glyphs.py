"""Noto glyphs: the cross-domain benchmark, typeset characters of scripts absent from training.

Omniglot is handwriting. These are glyphs of 15 other scripts rendered from
Debian's Noto fonts (packages fonts-noto-core and fonts-noto-extra, SIL Open
Font License 1.1), each character by 20 "drawers": a drawer is one typeface
file (sans, serif, looped or slanted designs; weights from Thin to Black;
widths from extra-condensed to normal), a glyph size on the canvas, and a
rendering resolution from 16 to 105 pixels upscaled to 105 (low-resolution
renderings look like coarse scans). The scripts split into `train` (meta-training
the fine-tuning step sizes; never the base's weights), `val` (choosing checkpoints,
rules and thresholds) and `test` (reported, never used to choose).

The thin-stroke family (`thin`) is the same scripts and splits drawn with Thin, ExtraLight
and Light typefaces only: strokes as thin as Omniglot's pen, in a typeset domain.

The set is generated, not committed: `build()` renders it once from the fonts
into `.cache/` (a few seconds), and its SHA-256 is recorded in every report.
None of the scripts is an Omniglot background alphabet or one of Lake et al.'s
20 evaluation alphabets.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file

from ..preprocess import PREPROCESSING, decode_square, frame_ink, levels_to_tensor
from .omniglot import CACHE_DIR

FONT_DIR = Path("/usr/share/fonts/truetype/noto")
VERSION = "noto-glyphs-v1"
CANVAS = 105
DRAWERS = 20
CHARS_PER_SCRIPT = 30
# script -> (code point ranges, font file prefixes)
SCRIPTS = {
    "Armenian": ([(0x0531, 0x0556), (0x0561, 0x0586)], ["NotoSansArmenian", "NotoSerifArmenian"]),
    "Hebrew": ([(0x05D0, 0x05EA)], ["NotoSansHebrew", "NotoSerifHebrew", "NotoRashiHebrew"]),
    "Thai": ([(0x0E01, 0x0E2E)], ["NotoSansThai", "NotoSerifThai", "NotoLoopedThai"]),
    "Cherokee": ([(0x13A0, 0x13F5)], ["NotoSansCherokee"]),
    "Bengali": ([(0x0985, 0x09B9)], ["NotoSansBengali", "NotoSerifBengali"]),
    "Georgian": ([(0x10D0, 0x10FA)], ["NotoSansGeorgian", "NotoSerifGeorgian"]),
    "Gujarati": ([(0x0A85, 0x0AB9)], ["NotoSansGujarati", "NotoSerifGujarati"]),
    "Khmer": ([(0x1780, 0x17A2)], ["NotoSansKhmer", "NotoSerifKhmer"]),
    "Lao": ([(0x0E81, 0x0EAE)], ["NotoSansLao", "NotoSerifLao", "NotoLoopedLao"]),
    "Myanmar": ([(0x1000, 0x102A)], ["NotoSansMyanmar", "NotoSerifMyanmar"]),
    "Sinhala": ([(0x0D85, 0x0DC6)], ["NotoSansSinhala", "NotoSerifSinhala"]),
    "Tamil": ([(0x0B85, 0x0BB9)], ["NotoSansTamil", "NotoSerifTamil", "NotoSerifTamilSlanted"]),
    "Telugu": ([(0x0C05, 0x0C39)], ["NotoSansTelugu", "NotoSerifTelugu"]),
    "CanadianAboriginal": ([(0x1401, 0x166C)], ["NotoSansCanadianAboriginal"]),
    "Thaana": ([(0x0780, 0x07A5)], ["NotoSansThaana"]),
}
SPLITS = {
    "train": ("Armenian", "Hebrew"),
    "val": ("Thai", "Cherokee"),
    "test": (
        "Bengali",
        "Georgian",
        "Gujarati",
        "Khmer",
        "Lao",
        "Myanmar",
        "Sinhala",
        "Tamil",
        "Telugu",
        "CanadianAboriginal",
        "Thaana",
    ),
}


THIN = ("Thin", "Light")  # the thin-stroke family: Thin, ExtraLight and Light faces (any width) only


def fonts_of(prefixes: list[str], weights: tuple[str, ...] | None = None) -> list[Path]:
    """The font files of a script; with `weights`, only faces whose style names one of them."""
    found = sorted(p for pre in prefixes for p in FONT_DIR.glob(f"{pre}-*.ttf"))
    return [p for p in found if weights is None or any(w in p.stem.split("-", 1)[1] for w in weights)]


def covered(path: Path) -> set[int]:
    from fontTools.ttLib import TTFont

    return set(TTFont(path, lazy=True).getBestCmap())


def render(char: str, font_path: Path, fill: float, resolution: int) -> Image.Image:
    """One glyph, ink black on white, its longer side `fill` of a `resolution`-pixel
    canvas, centred, then upscaled (bilinear) to CANVAS pixels."""
    ref = ImageFont.truetype(str(font_path), 200)
    left, top, right, bottom = ref.getbbox(char)
    size = max(1, round(200 * fill * resolution / max(right - left, bottom - top, 1)))
    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(char)
    img = Image.new("L", (resolution, resolution), 255)
    ImageDraw.Draw(img).text(
        ((resolution - (right - left)) / 2 - left, (resolution - (bottom - top)) / 2 - top), char, font=font, fill=0
    )
    return img if resolution == CANVAS else img.resize((CANVAS, CANVAS), Image.Resampling.BILINEAR)


def is_letter(c: int) -> bool:
    return unicodedata.category(chr(c)).startswith("L")


def draw_scripts(
    scripts: dict,
    seed: int = 0,
    weights: tuple[str, ...] | None = None,
    per_script: int = CHARS_PER_SCRIPT,
    keep=is_letter,
):
    """Yield ("SCRIPT/uXXXX/NN", image) for every script of `scripts` ({name: (code point ranges, font
    prefixes)}), up to `per_script` of its characters that `keep` accepts and every font of its drawers
    covers, each by DRAWERS drawers (typefaces of `weights` only, where given)."""
    rng = random.Random(seed)
    for script, (ranges, prefixes) in scripts.items():
        fonts = fonts_of(prefixes, weights)
        if not fonts:
            raise FileNotFoundError(
                f"no Noto fonts for {script} under {FONT_DIR}: apt-get install fonts-noto-core fonts-noto-extra"
            )
        shuffled = rng.sample(fonts, len(fonts))  # a script with fewer fonts than drawers reuses them at other sizes
        drawers = (shuffled * math.ceil(DRAWERS / len(fonts)))[:DRAWERS]
        common = set.intersection(*(covered(f) for f in set(drawers)))
        chars = [c for c in sorted(common) if any(lo <= c <= hi for lo, hi in ranges) and keep(c)]
        chars = sorted(rng.sample(chars, min(per_script, len(chars))))
        styles = [
            (rng.uniform(0.55, 0.9), round(math.exp(rng.uniform(math.log(16), math.log(CANVAS))))) for _ in drawers
        ]
        for c in chars:
            for d, (font, (fill, resolution)) in enumerate(zip(drawers, styles)):
                yield f"{script}/u{c:04X}/{d:02d}", render(chr(c), font, fill, resolution)


def generate(seed: int = 0, weights: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """-> {"SCRIPT/uXXXX/NN.png": PNG bytes} for every script of the benchmark, character and drawer
    (typefaces of `weights` only, where given)."""
    out = {}
    for name, img in draw_scripts(SCRIPTS, seed, weights):
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        out[f"{name}.png"] = buf.getvalue()
    return out


def version(thin: bool = False) -> str:
    return f"{VERSION}-thin" if thin else VERSION


def build(cache_dir: Path, thin: bool = False) -> Path:
    """The benchmark's zip under cache_dir (`thin`: the thin-stroke family's), generated once."""
    path = Path(cache_dir) / f"{version(thin)}.zip"
    if not path.exists():
        files = generate(weights=THIN if thin else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name in sorted(files):
                zf.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), files[name])
        tmp.rename(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Glyphs:
    """All glyphs, preprocessed as served images are (`decode_square`, `frame_ink`):
    images [M, 1, 28, 28], and per image its script, character and drawer."""

    images: torch.Tensor
    scripts: list[str]
    chars: list[str]  # "Script/uXXXX"
    drawers: list[int]
    zip_path: Path
    names: list[str]  # the PNG's name in the zip

    def png(self, i: int) -> bytes:
        with zipfile.ZipFile(self.zip_path) as zf:
            return zf.read(self.names[i])


def load(cache_dir: Path = CACHE_DIR, thin: bool = False) -> Glyphs:
    """Render the set once (`build`) and decode it through the serving preprocessing once."""
    zpath = build(cache_dir, thin)
    key = hashlib.sha256(json.dumps([sha256(zpath), PREPROCESSING]).encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"{version(thin)}-{key}.safetensors"
    with zipfile.ZipFile(zpath) as zf:
        names = sorted(zf.namelist())
        if cached.exists():
            images = load_file(cached)["images"]
        else:
            images = levels_to_tensor(frame_ink([decode_square(zf.read(n), 10**7) for n in names]))
            save_file({"images": images}, str(cached))
    parts = [n.split("/") for n in names]
    return Glyphs(
        images, [p[0] for p in parts], [f"{p[0]}/{p[1]}" for p in parts], [int(p[2][:2]) for p in parts], zpath, names
    )


class EpisodeSampler:
    """N-way K-shot episodes with every class a character of ONE script, shots and
    queries by different drawers (as Omniglot's within-alphabet episodes)."""

    def __init__(self, ds: Glyphs, split: str):
        self.ds = ds
        self.by_char: dict[str, list[int]] = {}
        for i, (script, char) in enumerate(zip(ds.scripts, ds.chars)):
            if script in SPLITS[split]:
                self.by_char.setdefault(char, []).append(i)
        self.scripts: dict[str, list[str]] = {}
        for char in self.by_char:
            self.scripts.setdefault(char.split("/")[0], []).append(char)

    def sample_ids(self, n_way: int, k_shot: int, n_query: int, gen: torch.Generator):
        """-> support [(index, label)], query [(index, label)]."""
        names = sorted(s for s, cs in self.scripts.items() if len(cs) >= n_way)
        script = names[int(torch.randint(len(names), (1,), generator=gen))]
        chars = self.scripts[script]
        support, query = [], []
        for label, i in enumerate(torch.randperm(len(chars), generator=gen)[:n_way].tolist()):
            ids = self.by_char[chars[i]]
            order = torch.randperm(len(ids), generator=gen)[: k_shot + n_query].tolist()
            support += [(ids[j], label) for j in order[:k_shot]]
            query += [(ids[j], label) for j in order[k_shot:]]
        return support, query

    def sample(self, n_way: int, k_shot: int, n_query: int, gen: torch.Generator):
        """-> support x, y, query x, y."""
        support, query = self.sample_ids(n_way, k_shot, n_query, gen)
        t = lambda ids: (self.ds.images[[i for i, _ in ids]], torch.tensor([label for _, label in ids]))
        return (*t(support), *t(query))
