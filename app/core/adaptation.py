"""One adaptation from a stored support set: the worker's job and the API's
re-adaptation after a cache eviction both go through `run_adaptation`, which
calls models' `adapt`. Deterministic: the same support set gives the same weights."""

from __future__ import annotations

import hashlib
import time

import torch

from models import runtime
from models.adapt import adapt, choose, no_pause
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
    registry: Registry,
    record: dict,
    support: dict[str, torch.Tensor],
    dev: torch.device | None = None,
    on_step=None,
    pause=no_pause,
    mode: str | None = None,
):
    """-> (the adaptation's tensors as stored, on CPU (`Base.to_stored`), metrics). Raises
    ValueError for a support set `adapt` refuses, `registry.BaseChanged` or KeyError when its
    base version is gone. `on_step` and `pause` are `adapt`'s; `mode`, the job's mode already
    resolved (`resolved_mode`), where the caller has it."""
    return run_adaptations(registry, [record], [support], dev, on_step, pause, mode)[0]


def resolved_mode(registry: Registry, record: dict, support: dict[str, torch.Tensor], dev: torch.device) -> str:
    """The inner loop a job runs: its mode, with `auto` resolved from the support set
    (`models.adapt.choose`). The plain support's trunk features that the choice computed are
    left in support["trunk"], for `run_adaptations` to hand to `adapt` rather than compute again."""
    mode = record.get("mode", "fast")
    if mode != "auto":
        return mode
    model, _ = registry.load(record["model"], record.get("model_version"), dev.type)
    choice = choose(model, support["x"].to(dev), support["y"].to(dev))
    if choice.trunk is not None:
        support["trunk"] = choice.trunk
    return choice.mode


def batch_key(record: dict) -> str:
    """What jobs must share to adapt together (one `adapt` over their stacked support sets), read
    from the record alone: base version, steps, support size and classes (a base's inputs all
    have its one shape), in the fast mode (requested, or `auto` where it resolves so), as a short
    digest. '' for a job that never batches (fine-tune adapts one task at a time)."""
    if record.get("mode", "fast") not in ("fast", "auto"):
        return ""
    n_ways = len(record["classes"]) if record.get("classes") else 0
    what = f"{record['model']}@{record.get('model_version')}:{record.get('steps')}:{record.get('n_support')}:{n_ways}"
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def run_adaptations(
    registry: Registry,
    records: list[dict],
    supports: list[dict[str, torch.Tensor]],
    dev: torch.device | None = None,
    on_step=None,
    pause=no_pause,
    mode: str | None = None,
) -> list[tuple[dict, dict]]:
    """`run_adaptation` of several jobs of one batch key (`batch_key`, their mode resolved to
    fast) adapted together: one `adapt` over T stacked support sets, each task's weights equal
    to its own run's (embedding is per image; the fast loop and its guard are per task).
    `on_step(k, losses)` gets each job's loss. -> each job's (tensors as stored, metrics)."""
    dev, first = dev or torch.device("cpu"), records[0]
    with tracing.phase("load base"):
        model, _ = registry.load(first["model"], first.get("model_version"), dev.type)
    x = torch.stack([s["x"] for s in supports]).to(dev)
    y = torch.stack([s["y"] for s in supports]).to(dev)
    n_ways = len(first["classes"]) if first.get("classes") else None
    started = time.perf_counter()
    if mode is None:
        mode = resolved_mode(registry, first, supports[0], dev) if len(records) == 1 else "fast"
    trunk = torch.stack([s["trunk"] for s in supports]).to(dev) if all("trunk" in s for s in supports) else None
    with tracing.phase(f"adapt {mode}"):
        steps = first.get("steps")
        adapted = adapt(
            model, x, y, steps, mode=mode, n_ways=n_ways, on_step=on_step, phase=tracing.phase, pause=pause, trunk=trunk
        )
    stored = [
        {k: v.cpu() for k, v in model.to_stored({n: p[i : i + 1] for n, p in adapted.fast.items()}).items()}
        for i in range(len(records))
    ]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) * 1000
    out = []
    for i, weights in enumerate(stored):
        metrics = {
            "mode": adapted.mode if hasattr(model, "tail") else mode,
            "steps": adapted.steps,
            "support_loss_before": round(adapted.loss_before[i].item(), 6),
            "support_loss_after": round(adapted.loss_after[i].item(), 6),
            "loss_curve": [round(v, 6) for v in adapted.loss_curve[i].tolist()],
            "adaptation_ms": round(ms, 3),
            "stopped_early": bool(adapted.stopped_early[i]),
            "device": dev.type,
        }
        if len(records) > 1:
            metrics["batched"] = len(records)  # adapted together with this many jobs: adaptation_ms is theirs
        out.append((weights, metrics))
    return out
