"""The bases a process serves: every valid base in its models directories.

A base is NAME.json (architecture, input spec, training record) beside NAME.safetensors
(θ and φ). Each directory is scanned at most once every `poll_seconds` when a base is
asked for (a poll, so a base published while the service runs is picked up by the API and
every worker within seconds); a base is loaded lazily, once per process and version. Its
version is a content hash of its two files: an adaptation records the version it was made
from, and is only ever answered by that version's weights (`BaseChanged` when they are no
longer in memory). A file that cannot be read, or names what this code cannot build, is
refused with a log line naming it; the others keep serving. Bases whose JSON says
`"serve": false` (the baselines) are not offered.

A `Registry` belongs to whoever serves from it: the API creates one in its lifespan, each
worker process one at start; `shipped()` is the committed bases, for research, tests and
benchmarks. A base is held on each device it is asked for, for the versions kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from safetensors import safe_open

from . import checkpoint
from .adapt import mode_steps
from .nets import ARCHITECTURES, Base
from .preprocess import KINDS

log = logging.getLogger("rapid_adapt.models")
VERSIONS_KEPT = 3  # versions of one base held in memory, the newest first


class BaseChanged(Exception):
    """The version an adaptation was made from is no longer loaded."""


@dataclass
class Entry:
    name: str
    path: Path  # without suffix
    version: str
    signature: tuple  # (size, mtime) of both files: a change means a new version to hash


@dataclass
class Held:
    """One loaded version of a base: its CPU model, its spec, and its copies on other devices."""

    version: str
    model: Base
    spec: dict
    on: dict[str, Base] = field(default_factory=dict)  # device type -> a copy there
    meta: dict = field(default_factory=dict)  # its checkpoint JSON (an export carries it)

    def model_on(self, device: str) -> Base:
        if device == "cpu":
            return self.model
        if device not in self.on:
            self.on[device] = copy.deepcopy(self.model).to(device)
        return self.on[device]


def files_of(path: Path) -> list[Path]:
    """A base's files: its JSON and weights, and a backbone's exported program."""
    files = [path.with_suffix(".json"), path.with_suffix(".safetensors")]
    return files + [path.with_suffix(".pt2")] if path.with_suffix(".pt2").exists() else files


def version_of(path: Path) -> str:
    h = hashlib.sha256()
    for f in files_of(path):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def signature(path: Path) -> tuple:
    return tuple(x for f in files_of(path) for x in (f.stat().st_size, f.stat().st_mtime_ns))


def input_spec(meta: dict) -> dict:
    """The base's input, from its JSON (older JSONs of the two first bases predate the field)."""
    if "input" in meta:
        return meta["input"]
    if meta["architecture"] == "mlp":
        return {
            "kind": "vector",
            "shape": [1],
            "range": [-5.0, 5.0],
            "encodings": ["array"],
            "preprocessing": {"kind": "none", "description": "x as a one-element array"},
        }
    raise ValueError("its JSON has no input spec")


def check(path: Path, meta: dict) -> None:
    """Refuse what this code cannot serve, before any weights are built."""
    if meta.get("architecture") == "backbone":
        if not path.with_suffix(".pt2").exists():
            raise ValueError("a backbone base needs its exported program, NAME.pt2")
    elif meta.get("architecture") not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {meta.get('architecture')!r}")
    spec = input_spec(meta)
    kind = spec.get("preprocessing", {}).get("kind")
    if spec["kind"] == "image" and kind not in KINDS:
        raise ValueError(f"its images are prepared as {kind!r}; this code prepares {', '.join(KINDS)}")
    with safe_open(str(path.with_suffix(".safetensors")), "pt") as f:
        if not list(f.keys()):
            raise ValueError("its weights file holds no tensors")


def public_input(spec: dict) -> dict:
    """The input spec as the API shows it: the preprocessing's description, and its kind apart."""
    prep = spec.get("preprocessing", {})
    shape = spec["shape"]
    return spec | {
        "channels": shape[0] if spec["kind"] == "image" else None,
        "preprocessing": prep.get("description", ""),
        "preprocessing_kind": prep.get("kind", "none"),
    }


def build_spec(name: str, path: Path, model: Base, meta: dict, version: str) -> dict:
    return {
        "name": name,
        "version": version,
        "task": meta["task"],
        "input": public_input(input_spec(meta)),
        "max_ways": meta.get("max_ways") if meta["task"] == "classification" else None,
        "default_steps": model.default_steps,
        "max_steps": model.max_steps,
        "modes": mode_steps(model),
        "algorithm": meta["algorithm"],
        "use_for": meta.get("use_for"),
        "adapted": meta.get("adapted"),
        "metrics": metrics(path),
    }


CROSS_DOMAIN = {"cross_domain": "glyphs", "cross_domain_thin": "glyphs-thin"}  # key -> benchmark


def metrics(path: Path) -> dict | None:
    """The base's canonical meta-test evaluation, with the cross-domain ones under `cross_domain`
    (the Noto glyphs) and `cross_domain_thin` (their thin-stroke family)."""
    evaluation = path.with_suffix(".eval.json")
    found = json.loads(evaluation.read_text()) if evaluation.exists() else None
    for key, benchmark in CROSS_DOMAIN.items():
        if found is not None and (cross := path.parent / f"{path.name}.{benchmark}.eval.json").exists():
            found[key] = json.loads(cross.read_text())
    return found


def load_path(path: Path) -> tuple[Base, dict]:
    """A base straight from its files (evaluation, research): -> (model, spec)."""
    path = Path(path)
    model, meta = checkpoint.load(path)
    return model, build_spec(path.name, path, model, meta, version_of(path))


class Registry:
    def __init__(self, directories: list[Path], poll_seconds: float = 2.0):
        self.directories, self.poll_seconds = [Path(d) for d in directories], poll_seconds
        self.entries: dict[str, Entry] = {}
        self.loaded: dict[str, list[Held]] = {}  # name -> the versions in memory, newest first
        self.refused: dict[Path, tuple] = {}  # path -> the signature refused (logged once per change)
        self.scanned: float | None = None  # monotonic time of the last scan; None: never (monotonic may be small)
        self.lock = threading.RLock()

    def scan(self, soon: bool = False) -> None:
        """Re-read the directories if the last scan is older than `poll_seconds` (with `soon`,
        older than a tenth of a second: a version asked for by name may have just been published)."""
        with self.lock:
            every = min(0.1, self.poll_seconds) if soon else self.poll_seconds
            if self.scanned is not None and time.monotonic() - self.scanned < every:
                return
            self.scanned = time.monotonic()
            found: dict[str, Entry] = {}
            for directory in self.directories:
                for meta_path in sorted(directory.glob("*.json")):
                    path = meta_path.with_suffix("")
                    if meta_path.name.endswith(".eval.json") or not path.with_suffix(".safetensors").exists():
                        continue
                    try:
                        sig = signature(path)
                        old = self.entries.get(path.name)
                        if old is not None and old.path == path and old.signature == sig:
                            found.setdefault(path.name, old)
                            continue
                        if self.refused.get(path) == sig:
                            continue
                        meta = json.loads(meta_path.read_text())
                        if meta.get("serve", meta.get("algorithm") != "transfer") is False:
                            continue
                        check(path, meta)
                        found.setdefault(path.name, Entry(path.name, path, version_of(path), sig))
                    except Exception as exc:  # any unreadable or unservable file: refused, the rest serve
                        self.refused[path] = signature(path) if path.with_suffix(".json").exists() else ()
                        log.warning("base refused", extra={"error": f"{path}: {exc.__class__.__name__}: {exc}"})
            self.entries = found

    def names(self) -> tuple[str, ...]:
        self.scan()
        return tuple(sorted(self.entries))

    def holds(self, name: str, version: str) -> bool:
        current = self.entries.get(name)
        held = [h.version for h in self.loaded.get(name, [])]
        return (current is not None and current.version == version) or version in held

    def checkpoint_of(self, name: str, version: str) -> tuple[Base, dict]:
        """-> (CPU model, checkpoint JSON) of that version of a base (an export's contents)."""
        self.load(name, version)
        with self.lock:
            held = next(h for h in self.loaded[name] if h.version == version)
            return held.model, held.meta

    def load(self, name: str, version: str | None = None, device: str = "cpu") -> tuple[Base, dict]:
        """-> (model on `device`, spec) of the current version, or of `version` (BaseChanged when
        that version is neither current nor still in memory). KeyError for an unknown name."""
        self.scan()
        with self.lock:
            if version is not None and not self.holds(name, version):
                self.scan(soon=True)  # another process (the API) may have seen it published first
            held = self.loaded.get(name, [])
            entry = self.entries.get(name)
            for h in held:
                if h.version == (version or (entry.version if entry else None)):
                    return h.model_on(device), h.spec
            if entry is None and version is None:
                raise KeyError(name)
            if version is not None and (entry is None or entry.version != version):
                raise BaseChanged(f"{name} version {version} is no longer loaded")
            try:
                model, meta = checkpoint.load(entry.path)
                current = version_of(entry.path)
            except Exception as exc:
                self.refused[entry.path] = entry.signature
                self.entries.pop(name, None)
                log.warning("base refused", extra={"error": f"{entry.path}: {exc.__class__.__name__}: {exc}"})
                raise KeyError(name) from None
            if current != entry.version:  # replaced between the scan and the load: take what was read
                entry.version = current
            new = Held(current, model, build_spec(name, entry.path, model, meta, current), meta=meta)
            self.loaded[name] = [new] + [h for h in held if h.version != current][: VERSIONS_KEPT - 1]
            return new.model_on(device), new.spec


@cache
def shipped() -> Registry:
    """The committed bases (models/checkpoints), for research, tests and benchmarks."""
    return Registry([checkpoint.CHECKPOINT_DIR])
