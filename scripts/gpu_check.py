"""The GPU check: `python scripts/gpu_check.py` (or `bash scripts/gpu_check.sh`) on a machine
with CUDA. For each base and mode it adapts the same support sets on the CPU and on the GPU
(the worker's `run_adaptation`, as a job runs), prints the medians of the adaptation time, and
compares what each stores and predicts: the largest difference of the query scores and the
share of queries whose label agrees. Exits 2 where no CUDA device is found, 1 when the GPU's
predictions disagree with the CPU's."""

from __future__ import annotations

import statistics
import sys
import time

import torch

from app.core.adaptation import run_adaptation, warm_up
from models.adapt import predict
from models.registry import shipped
from models.research import glyphs, omniglot


def tasks():
    ds, gl = omniglot.load(), glyphs.load()
    gen = torch.Generator().manual_seed(0)
    yield (
        "omniglot-conv4",
        "fast",
        "Omniglot test, 20-way 1-shot",
        omniglot.EpisodeSampler(ds, "test").sample(20, 1, 5, gen),
    )
    yield (
        "omniglot-conv4",
        "fine-tune",
        "glyphs test, 10-way 5-shot",
        glyphs.EpisodeSampler(gl, "test").sample(10, 5, 5, gen),
    )
    x = torch.rand(5, 1, generator=gen) * 10 - 5
    yield "sinusoid-mlp", "fast", "sinusoid, 5-shot", (x, 2 * torch.sin(x - 1), x, None)


def main(argv: list[str]) -> int:
    """`--against cpu` compares the CPU with itself: a dry run of this script without a GPU."""
    target = argv[argv.index("--against") + 1] if "--against" in argv else "cuda"
    if target == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to compare (the CPU path is what the tests cover)")
        return 2
    cuda = torch.device(target)
    name = torch.cuda.get_device_name(0) if target == "cuda" else "the CPU (dry run)"
    print(f"gpu_check: {name}, torch {torch.__version__}")
    bases = shipped()
    warm_up(bases, cuda)
    warm_up(bases, torch.device("cpu"))
    ok = True
    for name, mode, what, (sx, sy, qx, _) in tasks():
        record = {
            "model": name,
            "mode": mode,
            "steps": None,
            "classes": list(range(int(sy.max()) + 1)) if sy.dtype == torch.long else None,
        }
        support = {"x": sx, "y": sy}
        runs: dict[str, tuple] = {}
        for dev in (torch.device("cpu"), cuda):
            bases.load(name, None, dev.type)
            times = []
            for _ in range(10):
                t = time.perf_counter()
                stored, metrics = run_adaptation(bases, record, support, dev)
                times.append(1000 * (time.perf_counter() - t))
            runs["gpu" if dev is cuda else "cpu"] = (stored, metrics, statistics.median(times))
        model, _ = bases.load(name)
        out = {d: predict(model, model.from_stored(s), qx) for d, (s, _, _) in runs.items()}
        diff = (out["cpu"] - out["gpu"]).abs().max().item()
        classification = sy.dtype == torch.long
        agree = (out["cpu"].argmax(-1) == out["gpu"].argmax(-1)).float().mean().item() if classification else 1.0
        ok &= agree == 1.0 if classification else diff < 1e-3
        print(
            f"{name} {mode:9} {what}: adapt median CPU {runs['cpu'][2]:.1f} ms, GPU {runs['gpu'][2]:.1f} ms; "
            f"query outputs differ by at most {diff:.2e}, labels agree on {100 * agree:.0f}%"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
