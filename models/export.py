"""Make a backbone base (models/backbone.py) from a torch module that maps inputs to vectors:
export it with `torch.export` (a dynamic batch), write NAME.pt2, NAME.json and NAME.safetensors
(the head's step sizes), and check the round trip: the exported program's outputs equal the
module's on batches of several sizes.

    python -m models.export base omniglot-conv4 --out DIR [--name NAME]   # a served base's frozen part
    python -m models.export identity --dim 16 --out DIR [--name NAME]     # D-vectors in: a head server
    python -m models.export module pkg.mod:make --input spec.json --out DIR --name NAME   # any module

From Python, `export_backbone(module, input_spec, path)` does it for any module."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint
from .backbone import Backbone

ROUND_TRIP_BATCHES = (1, 3, 17)


class Frozen(nn.Module):
    """A project base's embedding with its own weights (what `fast` does not adapt), as a module."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base.embed_inference(x)


class Identity(nn.Module):
    def forward(self, x):
        return x.clone()


def export_backbone(
    module: nn.Module,
    input_spec: dict,
    path: Path,
    *,
    embedding_size: int | None = None,
    steps: int = 10,
    step_sizes: dict[str, torch.Tensor] | None = None,
    max_ways: int = 50,
    support_shifts: bool = False,
    about: dict | None = None,
) -> Path:
    """Write the backbone base PATH.{pt2,json,safetensors}. -> PATH. Raises ValueError when
    the exported program's outputs differ from the module's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    shape = tuple(input_spec["shape"])
    example = torch.rand(4, *shape)
    with torch.no_grad():
        dim = embedding_size or module(example).shape[-1]
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path.with_suffix(".pt2")))
    loaded = torch.export.load(str(path.with_suffix(".pt2"))).module()
    for n in ROUND_TRIP_BATCHES:
        x = torch.rand(n, *shape)
        with torch.no_grad():
            want, got = module(x), loaded(x)
        if got.shape != (n, dim) or not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            raise ValueError(f"the exported program differs from the module on a batch of {n}")
    kwargs = {"embedding_size": int(dim), "input_shape": list(shape), "steps": steps, "max_ways": max_ways}
    kwargs["support_shifts"] = support_shifts
    base = Backbone(**kwargs)
    if step_sizes is not None:
        base.step_sizes.load_state_dict(step_sizes)
    meta = {
        "name": path.name,
        "architecture": "backbone",
        "architecture_kwargs": kwargs,
        "task": "classification",
        "max_ways": max_ways,
        "default_steps": steps,
        "algorithm": "backbone + prototype head" + (" (learned step sizes)" if step_sizes else ""),
        "adapted": ["bias", "weight"],
        "input": input_spec,
        "torch": torch.__version__,
        "backbone": about or {},
    }
    checkpoint.save(base, meta, path)
    return path


def export_base(name: str, out: Path, new_name: str | None = None) -> Path:
    """A served image base's frozen part (its embedding) with its learned head step sizes."""
    model, meta = checkpoint.load(checkpoint.CHECKPOINT_DIR / name)
    if not hasattr(model, "embed_inference"):
        raise ValueError(f"{name} is not an image base with an embedding to export")
    step_sizes = {k: v.detach().clone() for k, v in model.step_sizes.items()}
    return export_backbone(
        Frozen(model),
        meta.get("input") or input_like(meta),
        Path(out) / (new_name or f"{name}-backbone"),
        steps=model.max_steps,
        step_sizes=step_sizes,
        max_ways=meta.get("max_ways", 50),
        support_shifts=bool(getattr(model, "support_shifts", False)),
        about={"source": name, "exported": "embed_inference with its own weights"},
    )


def input_spec_of(path: Path) -> dict | None:
    return json.loads(path.read_text()).get("input")


def input_like(meta: dict) -> dict:
    """The input spec of a base whose JSON predates the field (the transfer baseline): that of a
    committed base whose images were prepared the same way."""
    prepared = meta.get("data", {}).get("preprocessing")
    for path in sorted(checkpoint.CHECKPOINT_DIR.glob("*.json")):
        spec = input_spec_of(path) if not path.name.endswith(".eval.json") else None
        if spec and spec.get("preprocessing", {}).get("kind") == prepared:
            return spec
    raise ValueError(f"{meta.get('name')}: its JSON has no input spec, and no committed base prepares {prepared!r}")


def export_identity(dim: int, out: Path, name: str | None = None) -> Path:
    """Vectors in, the same vectors as the embedding: the user brings their own embeddings."""
    spec = {
        "kind": "vector",
        "shape": [dim],
        "encodings": ["array"],
        "preprocessing": {"kind": "none", "description": f"a {dim}-number embedding, used as it is"},
    }
    return export_backbone(Identity(), spec, Path(out) / (name or f"vectors-{dim}"), steps=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("base", help="a served image base's embedding, with its learned head step sizes")
    b.add_argument("base")
    i = sub.add_parser("identity", help="D-vectors in: embeddings you compute elsewhere")
    i.add_argument("--dim", type=int, required=True)
    m = sub.add_parser("module", help="any torch module mapping inputs to vectors, made by a function you name")
    m.add_argument("factory", help="module:function, called with no arguments, returning the nn.Module")
    m.add_argument("--input", type=Path, required=True, help="the input spec, JSON (as /v1/models shows one)")
    for s in (b, i, m):
        s.add_argument("--out", type=Path, required=True, help="a models directory (RAPID_ADAPT_MODELS_DIR)")
        s.add_argument("--name", required=s is m, help="the new base's name")
    args = p.parse_args(argv)
    if args.what == "base":
        path = export_base(args.base, args.out, args.name)
    elif args.what == "identity":
        path = export_identity(args.dim, args.out, args.name)
    else:
        module_name, _, function = args.factory.partition(":")
        make = getattr(importlib.import_module(module_name), function)
        path = export_backbone(make(), json.loads(args.input.read_text()), args.out / args.name)
    print(f"wrote {path}.pt2, .json and .safetensors (round trip checked on batches of {ROUND_TRIP_BATCHES})")


if __name__ == "__main__":
    main()
