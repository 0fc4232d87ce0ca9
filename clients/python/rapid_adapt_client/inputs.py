"""Building support sets and inputs: an image's bytes as an INPUT, and the formats the
command line reads (a folder of class folders of images, a CSV, a JSON file)."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def image_input(png_or_jpeg: bytes) -> dict:
    """An INPUT for image bases from the bytes of a PNG or JPEG."""
    return {"image": base64.b64encode(png_or_jpeg).decode()}


def number_or_vector(cells: list[str]):
    values = [float(c) for c in cells]
    return values


def read_support(path: Path) -> list[dict]:
    """Support examples from a folder of class folders (`DIR/LABEL/*.png`), a CSV of
    `input,target` rows (every column but the last is the input), or a JSON file (a list
    of examples, or {"support": [...]})."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        examples = []
        for label_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            for f in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                examples.append({"input": image_input(f.read_bytes()), "label": label_dir.name})
        if not examples:
            raise ValueError(f"{path}: no class folders with .png/.jpg images in them")
        return examples
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
        if rows and not _numeric(rows[0]):
            rows = rows[1:]  # a header
        return [{"input": number_or_vector(r[:-1]), "target": float(r[-1])} for r in rows]
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        return data["support"] if isinstance(data, dict) else data
    raise ValueError(f"{path}: support is a folder of class folders of images, a .csv or a .json")


def expand(paths: list[Path]) -> list[Path]:
    """The paths, each folder replaced by the images in it (sorted by name)."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ValueError(f"{path}: a folder with no .png/.jpg images in it")
            out += images
        else:
            out.append(path)
    return out


def read_inputs(paths: list[Path]) -> list:
    """Query inputs from image files, folders of them, CSV files (one input per row) or JSON
    files (a list of inputs, or {"inputs": [...]})."""
    inputs = []
    for path in expand(paths):
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            inputs.append(image_input(path.read_bytes()))
        elif path.suffix.lower() == ".csv":
            rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
            if rows and not _numeric(rows[0]):
                rows = rows[1:]
            inputs += [number_or_vector(r) for r in rows]
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            inputs += data["inputs"] if isinstance(data, dict) else data
        else:
            raise ValueError(f"{path}: inputs are .png/.jpg images, folders of them, a .csv or a .json")
    return inputs


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
        return True
    except ValueError:
        return False
