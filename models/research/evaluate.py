"""Evaluation: `python -m models.evaluate {omniglot,sinusoid,omniglot-runs,make-runs} ...`.

Meta-test figures on tasks the base never trained on (Omniglot: the test
alphabets; sinusoid: a seeded stream of fresh tasks), as a mean over at least
600 tasks with a 95% confidence interval, next to the baselines of the same
run on the same tasks:
  - scratch:  the same network, randomly initialised, trained on the support
              set by the classic loop (Adam) for the base's default steps;
  - transfer: supervised pre-training on all meta-train data, then a new head
              fine-tuned by the classic loop for the same steps;
  - the base after 0 steps (Omniglot: prototypes only), 1 step, and its default steps.
Writes NAME.eval.md, NAME.eval.json and NAME.eval.png beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from .. import checkpoint, registry, runtime
from ..adapt import adapt, predict
from ..nets import Base
from ..preprocess import decode_image
from . import omniglot, sinusoid
from .baselines import Classifier, classic_finetune


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (1.96 * t.std(unbiased=True) / math.sqrt(len(t))).item()


def base_curve(model: Base, sx, sy, qx, steps: int) -> list[torch.Tensor]:
    """Outputs on the query after 0..steps inner steps: one `adapt` call."""
    adapted = adapt(model, sx, sy, steps, trajectory=True)
    with torch.no_grad():
        feats = model.embed(qx).unsqueeze(0)
        return [model.fast_forward(f, feats)[0] for f in adapted.trajectory]


def summarize(metric: str, scores: dict, curve: list, zero_steps: str, base: str) -> dict:
    """Baseline rows, then the base after 0, 1 and its default steps, each as mean ± 95% CI."""
    steps = len(curve) - 1
    scores = scores | {
        zero_steps: curve[0],
        f"{base}, 1 step": curve[1],
        f"{base}, {steps} steps (default)": curve[steps],
    }
    return {
        "metric": metric,
        "rows": {name: dict(zip(("mean", "ci95"), mean_ci(v))) for name, v in scores.items()},
        "curve": [dict(zip(("mean", "ci95"), mean_ci(v))) for v in curve],
    }


def evaluate_omniglot(args) -> dict:
    model, _ = registry.load(args.base, Path(args.dir))
    transfer, _ = checkpoint.load(Path(args.dir) / args.transfer)
    ds = omniglot.load()
    sampler = omniglot.EpisodeSampler(ds, args.split)
    steps = model.default_steps
    results = {}
    for protocol in args.protocols.split(","):
        n_way, k_shot = (int(v) for v in protocol.split("x"))
        gen = torch.Generator().manual_seed(args.seed)
        scores: dict[str, list[float]] = {}
        curve: list[list[float]] = [[] for _ in range(steps + 1)]
        for i in tqdm(range(args.episodes), desc=f"omniglot {n_way}-way {k_shot}-shot ({args.split})", mininterval=2):
            sx, sy, qx, qy = sampler.sample(n_way, k_shot, args.queries, gen)
            acc = lambda out, qy=qy: (out.argmax(-1) == qy).float().mean().item()
            outs = base_curve(model, sx, sy, qx, steps)
            for k, out in enumerate(outs):
                curve[k].append(acc(out))
            torch.manual_seed(args.seed * 1_000_003 + i)
            scratch = classic_finetune(
                Classifier(type(model)(), n_way), sx, sy, steps, args.scratch_lr, "classification"
            )
            tuned = classic_finetune(
                Classifier(transfer, n_way),
                sx,
                sy,
                steps,
                args.transfer_lr,
                "classification",
                params=lambda m: m.head.parameters(),
            )
            with torch.no_grad():
                scores.setdefault("scratch (classic loop, all weights)", []).append(acc(scratch(qx)))
                scores.setdefault("transfer (pre-trained, new head)", []).append(acc(tuned(qx)))
        results[f"{n_way}-way {k_shot}-shot"] = summarize(
            "accuracy", scores, curve, f"{args.base}, 0 steps (prototypes)", args.base
        )
    return results


def evaluate_sinusoid(args) -> dict:
    model, _ = registry.load(args.base, Path(args.dir))
    transfer, _ = checkpoint.load(Path(args.dir) / args.transfer)
    steps = model.default_steps
    results = {}
    for k_shot in (int(v) for v in args.shots.split(",")):
        gen = torch.Generator().manual_seed(args.seed)
        sx, sy, qx, qy = sinusoid.sample_tasks(args.episodes, k_shot, args.queries, gen)
        scores: dict[str, list[float]] = {}
        curve: list[list[float]] = [[] for _ in range(steps + 1)]
        mse = lambda out, i, qy=qy: ((out - qy[i]) ** 2).mean().item()
        for i in tqdm(range(args.episodes), desc=f"sinusoid {k_shot}-shot", mininterval=2):
            for k, out in enumerate(base_curve(model, sx[i], sy[i], qx[i], steps)):
                curve[k].append(mse(out, i))
            torch.manual_seed(args.seed * 1_000_003 + i)
            scratch = classic_finetune(type(model)().net, sx[i], sy[i], steps, args.scratch_lr, "regression")
            head = nn.Linear(transfer.net[4].in_features, 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            tuned = classic_finetune(
                nn.Sequential(*transfer.net[:4], head),
                sx[i],
                sy[i],
                steps,
                args.transfer_lr,
                "regression",
                params=lambda m: m[4].parameters(),
            )
            with torch.no_grad():
                scores.setdefault("scratch (classic loop, all weights)", []).append(mse(scratch(qx[i]), i))
                scores.setdefault("transfer (pre-trained, new head)", []).append(mse(tuned(qx[i]), i))
        results[f"{k_shot}-shot"] = summarize("mse", scores, curve, f"{args.base}, 0 steps", args.base)
    return results


def write_report(args, results: dict) -> None:
    """Print the table; write it as Markdown, JSON and a PNG of metric vs steps."""
    lines = [
        f"# {args.base}: meta-test evaluation",
        "",
        f"`python -m models.evaluate {' '.join(sys.argv[1:])}`",
        "",
        f"{args.episodes} tasks per protocol, seed {args.seed}; mean ± 95% confidence interval.",
        "",
    ]
    for protocol, r in results.items():
        lines += [f"## {protocol} ({r['metric']})", "", f"| method | {r['metric']} |", "| --- | --- |"]
        lines += [f"| {name} | {v['mean']:.4f} ± {v['ci95']:.4f} |" for name, v in r["rows"].items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    tag = (
        ""
        if getattr(args, "split", "test") == "test" and args.seed == 0
        else f"-{getattr(args, 'split', 'tasks')}-seed{args.seed}"
    )
    out = Path(args.dir) / (args.base + tag)  # only the canonical run (test split, seed 0) is what the API serves
    out.with_suffix(".eval.md").write_text(text)
    out.with_suffix(".eval.json").write_text(
        json.dumps(
            {"protocol": args.protocol_text, "episodes": args.episodes, "seed": args.seed, "results": results}, indent=2
        )
        + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for protocol, r in results.items():
        m = torch.tensor([c["mean"] for c in r["curve"]])
        ci = torch.tensor([c["ci95"] for c in r["curve"]])
        ax.plot(range(len(m)), m, marker="o", label=protocol)
        ax.fill_between(range(len(m)), m - ci, m + ci, alpha=0.2)
    ax.set_xlabel("inner steps")
    ax.set_ylabel(r["metric"])
    ax.set_title(f"{args.base} on held-out tasks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".eval.png"), dpi=100)
    plt.close(fig)


def omniglot_runs(args) -> float:
    """Lake et al.'s run format: error rate over runNN/ folders under DIR."""
    model, _ = registry.load(args.base, Path(args.dir))
    root = Path(args.runs)
    runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "class_labels.txt").exists())
    if not runs:
        raise SystemExit(f"no runNN/class_labels.txt under {root}")
    image = lambda rel: decode_image((root / rel).read_bytes(), max_pixels=10_000_000)
    errors = []
    for run in runs:
        pairs = [line.split() for line in (run / "class_labels.txt").read_text().splitlines() if line.strip()]
        classes = sorted({train for _, train in pairs})
        sx = torch.stack([image(c) for c in classes])
        qx = torch.stack([image(t) for t, _ in pairs])
        truth = torch.tensor([classes.index(c) for _, c in pairs])
        fast = adapt(model, sx, torch.arange(len(classes))).fast
        wrong = (predict(model, fast, qx).argmax(-1) != truth).float().mean().item()
        errors.append(wrong)
        print(f"{run.name}: error {100 * wrong:.1f}%")
    mean, ci = mean_ci(errors) if len(errors) > 1 else (errors[0], float("nan"))
    print(f"error rate over {len(errors)} runs: {100 * mean:.2f}% ± {100 * ci:.2f}% (95% CI)")
    return mean


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = {"dir": str(checkpoint.CHECKPOINT_DIR)}
    o = sub.add_parser("omniglot", help="N-way K-shot within-alphabet episodes on held-out alphabets")
    o.add_argument("--base", default="omniglot-conv4")
    o.add_argument("--transfer", default="omniglot-transfer")
    o.add_argument("--protocols", default="20x1,5x1", help="comma-separated WAYSxSHOTS")
    o.add_argument("--split", default="test", choices=list(omniglot.SPLITS))
    o.add_argument("--queries", type=int, default=5)
    o.add_argument(
        "--scratch-lr", type=float, default=1e-3, help="Adam lr of the scratch baseline (chosen on the val split)"
    )
    o.add_argument(
        "--transfer-lr",
        type=float,
        default=1e-2,
        help="Adam lr of the transfer baseline's new head (chosen on the val split)",
    )
    s = sub.add_parser("sinusoid", help="K-shot sinusoid regression on fresh tasks")
    s.add_argument("--base", default="sinusoid-mlp")
    s.add_argument("--transfer", default="sinusoid-transfer")
    s.add_argument("--shots", default="5,10,20")
    s.add_argument("--queries", type=int, default=100)
    s.add_argument(
        "--scratch-lr", type=float, default=1e-3, help="Adam lr of the scratch baseline (chosen on seed-123 tasks)"
    )
    s.add_argument(
        "--transfer-lr",
        type=float,
        default=1e-2,
        help="Adam lr of the transfer baseline's new head (chosen on seed-123 tasks)",
    )
    for q in (o, s):
        q.add_argument("--episodes", type=int, default=600)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--dir", default=common["dir"])
    r = sub.add_parser("omniglot-runs", help="error rate on Lake et al.'s one-shot run folders")
    r.add_argument("--base", default="omniglot-conv4")
    r.add_argument("--runs", required=True)
    r.add_argument("--dir", default=common["dir"])
    m = sub.add_parser("make-runs", help="write run folders in Lake et al.'s format from held-out alphabets")
    m.add_argument("--out", required=True)
    m.add_argument("--split", default="test", choices=list(omniglot.SPLITS))
    m.add_argument("--runs", type=int, default=20)
    m.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runtime.configure()
    if args.command == "omniglot":
        alphabets = omniglot.SPLITS[args.split]
        args.protocol_text = (
            f"within-alphabet episodes on the {args.split} alphabets {alphabets}, {args.queries} queries per class"
        )
        write_report(args, evaluate_omniglot(args))
    elif args.command == "sinusoid":
        args.protocol_text = f"fresh tasks (amplitude 0.1-5, phase 0-pi, x in -5..5), {args.queries} query points"
        write_report(args, evaluate_sinusoid(args))
    elif args.command == "omniglot-runs":
        omniglot_runs(args)
    else:
        print(omniglot.make_runs(omniglot.load(), args.split, Path(args.out), args.runs, args.seed))


if __name__ == "__main__":
    main()
