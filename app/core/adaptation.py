"""One adaptation from a stored support set: the worker's job and the API's
re-adaptation after a cache eviction both go through `run_adaptation`, which
calls models' `adapt`. Deterministic: the same support set gives the same weights."""

from __future__ import annotations

import time

import torch

from models import runtime
from models.adapt import adapt, choose_mode
from models.registry import Registry

from . import tracing


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warm_up(registry: Registry, dev: torch.device, threads: int = 0) -> None:
    """Configure the process for torch (`models.runtime`), load every base and run one tiny
    adaptation on each, so the first real job does not pay for allocator and thread-pool start-up."""
    runtime.configure(threads)
    for name in registry.names():
        model, _ = registry.load(name, None, dev.type)
        x = torch.zeros(2, *model.input_shape, device=dev)
        y = torch.arange(2, device=dev) if model.task == "classification" else torch.zeros(2, 1, device=dev)
        for mode in ("fast", "fine-tune"):
            adapt(model, x, y, mode=mode)


def run_adaptation(
    registry: Registry, record: dict, support: dict[str, torch.Tensor], dev: torch.device | None = None, on_step=None
):
    """-> (the adaptation's tensors as stored, on CPU (`Base.to_stored`), metrics). Raises
    ValueError for a support set `adapt` refuses, `registry.BaseChanged` or KeyError when its
    base version is gone. The `auto` mode is resolved here, from the support set
    (`models.adapt.choose_mode`)."""
    dev = dev or torch.device("cpu")
    with tracing.phase("load base"):
        model, _ = registry.load(record["model"], record.get("model_version"), dev.type)
    x, y = support["x"].to(dev), support["y"].to(dev)
    n_ways = len(record["classes"]) if record.get("classes") else None
    started = time.perf_counter()
    mode = record.get("mode", "fast")
    if mode == "auto":
        mode = choose_mode(model, x, y)
    with tracing.phase(f"adapt {mode}"):
        adapted = adapt(
            model, x, y, record.get("steps"), mode=mode, n_ways=n_ways, on_step=on_step, phase=tracing.phase
        )
    stored = {k: v.cpu() for k, v in model.to_stored(adapted.fast).items()}
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) * 1000
    metrics = {
        "mode": adapted.mode if hasattr(model, "tail") else mode,
        "steps": adapted.steps,
        "support_loss_before": round(adapted.loss_before.item(), 6),
        "support_loss_after": round(adapted.loss_after.item(), 6),
        "loss_curve": [round(v, 6) for v in adapted.loss_curve[0].tolist()],
        "adaptation_ms": round(ms, 3),
        "stopped_early": bool(adapted.stopped_early.any()),
        "device": dev.type,
    }
    return stored, metrics
