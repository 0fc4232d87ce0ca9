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
from ..adapt import MODES, adapt, choose_mode, predict
from ..backbone import Backbone
from ..nets import Base
from ..preprocess import decode_image
from . import folder, glyphs, omniglot, sinusoid
from .baselines import Classifier, classic_finetune


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (1.96 * t.std(unbiased=True) / math.sqrt(len(t))).item()


def base_curve(model: Base, sx, sy, qx, steps: int, mode: str = "fast") -> list[torch.Tensor]:
    """Outputs on the query after 0..steps inner steps of a mode: one `adapt` call, the
    query's shared features computed once."""
    adapted = adapt(model, sx, sy, steps, mode=mode, trajectory=True)
    with torch.no_grad():
        h = model.shared(qx)
        return [model.fast_forward(f, model.finish(h, f).unsqueeze(0))[0] for f in adapted.trajectory]


def stat(values: list[float]) -> dict:
    return dict(zip(("mean", "ci95"), mean_ci(values)))


def evaluate_classification(args, sampler, title: str) -> dict:
    """Every protocol WAYSxSHOTS on the sampler's episodes: the base after 0 steps, after 1
    step and the default steps of each mode, the default request (`auto`), and the transfer
    and scratch baselines on the same episodes."""
    model, _ = registry.load_path(Path(args.dir) / args.base)
    transfer = checkpoint.load(Path(args.dir) / args.transfer)[0] if args.transfer else None  # optional for a folder
    kwargs = json.loads((Path(args.dir) / f"{args.base}.json").read_text())["architecture_kwargs"]
    steps = model.default_steps  # the baselines' budget: the fast mode's steps
    results = {}
    for protocol in args.protocols.split(","):
        n_way, k_shot = (int(v) for v in protocol.split("x"))
        gen = torch.Generator().manual_seed(args.seed)
        scores: dict[str, list[float]] = {}
        curves: dict[str, list[list[float]]] = {}
        chosen = []
        for i in tqdm(range(args.episodes), desc=f"{title} {n_way}-way {k_shot}-shot ({args.split})", mininterval=2):
            sx, sy, qx, qy = sampler.sample(n_way, k_shot, args.queries, gen)
            acc = lambda out, qy=qy: (out.argmax(-1) == qy).float().mean().item()
            final = {}
            for mode in MODES:
                outs = [acc(out) for out in base_curve(model, sx, sy, qx, None, mode)]
                for k, a in enumerate(outs):
                    curves.setdefault(mode, [[] for _ in outs])[k].append(a)
                final[mode] = outs[-1]
            chosen.append(choose_mode(model, sx, sy))
            scores.setdefault(f"{args.base}, auto (the default request)", []).append(final[chosen[-1]])
            torch.manual_seed(args.seed * 1_000_003 + i)
            head_only = lambda m: m.head.parameters()
            if not isinstance(model, Backbone):  # a backbone's network is someone else's: no scratch copy of it
                scratch = classic_finetune(
                    Classifier(type(model)(**kwargs), n_way), sx, sy, steps, args.scratch_lr, "classification"
                )
                with torch.no_grad():
                    scores.setdefault(f"scratch (all weights, {steps} Adam steps)", []).append(acc(scratch(qx)))
            if transfer is not None:
                tuned = classic_finetune(
                    Classifier(transfer, n_way), sx, sy, steps, args.transfer_lr, "classification", params=head_only
                )
                with torch.no_grad():
                    key = f"transfer (pre-trained, new head, {steps} Adam steps)"
                    scores.setdefault(key, []).append(acc(tuned(qx)))
        fast, tune = curves["fast"], curves["fine-tune"]
        rows = {
            f"{args.base}, 0 steps (prototypes)": fast[0],
            f"{args.base}, fast, 1 step": fast[1],
            f"{args.base}, fast, {len(fast) - 1} steps (default)": fast[-1],
            f"{args.base}, fine-tune, 1 step": tune[1],
            f"{args.base}, fine-tune, {len(tune) - 1} steps (default)": tune[-1],
        } | scores
        results[f"{n_way}-way {k_shot}-shot"] = {
            "metric": "accuracy",
            "rows": {name: stat(v) for name, v in rows.items()},
            "curves": {mode: [stat(v) for v in c] for mode, c in curves.items()},
            "auto_chose": {mode: chosen.count(mode) for mode in MODES},
        }
    return results


def evaluate_sinusoid(args) -> dict:
    model, _ = registry.load_path(Path(args.dir) / args.base)
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
        rows = {
            f"{args.base}, 0 steps": curve[0],
            f"{args.base}, 1 step": curve[1],
            f"{args.base}, {steps} steps (default)": curve[steps],
        } | scores
        results[f"{k_shot}-shot"] = {
            "metric": "mse",
            "rows": {name: stat(v) for name, v in rows.items()},
            "curves": {"fast": [stat(v) for v in curve]},
        }
    return results


def write_report(args, results: dict, benchmark: str = "") -> None:
    """Print the table; write it as Markdown, JSON and a PNG of the metric against steps
    per mode. Only the canonical run (test split, seed 0) is written under the names the
    API serves (NAME.eval.json, and NAME.glyphs.eval.json for the cross-domain benchmark)."""
    lines = [
        f"# {args.base}: meta-test evaluation{f' ({benchmark})' if benchmark else ''}",
        "",
        f"`python -m models.evaluate {' '.join(args.argv)}`",
        "",
        f"{args.protocol_text}; {args.episodes} tasks per protocol, seed {args.seed}; mean ± 95% confidence interval.",
        "",
    ]
    for protocol, r in results.items():
        lines += [f"## {protocol} ({r['metric']})", "", f"| method | {r['metric']} |", "| --- | --- |"]
        lines += [f"| {name} | {v['mean']:.4f} ± {v['ci95']:.4f} |" for name, v in r["rows"].items()]
        if "auto_chose" in r:
            lines += ["", "auto chose: " + ", ".join(f"{m} {n}" for m, n in r["auto_chose"].items())]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    split = getattr(args, "split", "test")
    tag = (
        "" if split == "test" and args.seed == 0 else f"-{split if hasattr(args, 'split') else 'tasks'}-seed{args.seed}"
    )
    out = Path(args.dir) / (args.base + (f".{benchmark}" if benchmark else "") + tag)
    Path(f"{out}.eval.md").write_text(text)
    record = {"protocol": args.protocol_text, "episodes": args.episodes, "seed": args.seed, "results": results}
    Path(f"{out}.eval.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_steps(results, f"{args.base} on held-out tasks{f' ({benchmark})' if benchmark else ''}", f"{out}.eval.png")


def plot_steps(results: dict, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for protocol, r in results.items():
        for mode, curve in r["curves"].items():
            m = torch.tensor([c["mean"] for c in curve])
            ci = torch.tensor([c["ci95"] for c in curve])
            label = protocol if len(r["curves"]) == 1 else f"{protocol}, {mode}"
            ax.plot(range(len(m)), m, marker="o", markersize=3, label=label, linestyle="-" if mode == "fast" else "--")
            ax.fill_between(range(len(m)), m - ci, m + ci, alpha=0.2)
    ax.set_xlabel("inner steps")
    ax.set_ylabel(r["metric"])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def omniglot_runs(args) -> float:
    """Lake et al.'s run format: error rate over runNN/ folders under DIR."""
    model, _ = registry.load_path(Path(args.dir) / args.base)
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
        sy = torch.arange(len(classes))
        fast = adapt(model, sx, sy, mode="auto").fast  # what a default request runs
        wrong = (predict(model, fast, qx).argmax(-1) != truth).float().mean().item()
        errors.append(wrong)
        print(f"{run.name}: error {100 * wrong:.1f}%")
    mean, ci = mean_ci(errors) if len(errors) > 1 else (errors[0], float("nan"))
    print(f"error rate over {len(errors)} runs: {100 * mean:.2f}% ± {100 * ci:.2f}% (95% CI)")
    return mean


def baseline_lrs(p: argparse.ArgumentParser, chosen_on: str) -> None:
    """The baselines' learning rates, each chosen on `chosen_on`, never on the test split."""
    p.add_argument("--scratch-lr", type=float, default=1e-3, help=f"Adam lr of scratch (from {chosen_on})")
    p.add_argument("--transfer-lr", type=float, default=1e-2, help=f"Adam lr of transfer's head (from {chosen_on})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = {"dir": str(checkpoint.CHECKPOINT_DIR)}
    o = sub.add_parser("omniglot", help="N-way K-shot within-alphabet episodes on held-out alphabets")
    o.add_argument("--protocols", default="20x1,5x1", help="comma-separated WAYSxSHOTS")
    o.add_argument("--split", default="test", choices=list(omniglot.SPLITS))
    o.add_argument("--queries", type=int, default=5)
    g = sub.add_parser("glyphs", help="cross-domain: N-way K-shot within-script episodes of Noto glyphs")
    g.add_argument("--protocols", default="10x1,10x5", help="comma-separated WAYSxSHOTS")
    g.add_argument("--split", default="test", choices=list(glyphs.SPLITS))
    g.add_argument("--queries", type=int, default=10)
    g.add_argument("--thin", action="store_true", help="the thin-stroke family (Thin to Light typefaces only)")
    f = sub.add_parser("folder", help="N-way K-shot episodes of your own images (the base's held-out split)")
    f.add_argument("--data", required=True, type=Path, help="the folder the base was trained from")
    f.add_argument("--protocols", default="5x1,5x5", help="comma-separated WAYSxSHOTS")
    f.add_argument("--split", default="test", choices=["train", "val", "test"])
    f.add_argument("--queries", type=int, default=5)
    for q in (o, g):
        q.add_argument("--base", default="omniglot-conv4")
        q.add_argument("--transfer", default="omniglot-transfer", help="the transfer baseline's checkpoint")
        baseline_lrs(q, "the val split")
    f.add_argument("--base", required=True, help="your base's name (NAME.safetensors and NAME.json in --dir)")
    f.add_argument("--transfer", default=None, help="a folder-transfer checkpoint to compare with (optional)")
    baseline_lrs(f, "the val split")
    s = sub.add_parser("sinusoid", help="K-shot sinusoid regression on fresh tasks")
    s.add_argument("--base", default="sinusoid-mlp")
    s.add_argument("--transfer", default="sinusoid-transfer")
    s.add_argument("--shots", default="5,10,20")
    s.add_argument("--queries", type=int, default=100)
    baseline_lrs(s, "seed-123 tasks")
    for q in (o, g, f, s):
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
    args.argv = sys.argv[1:] if argv is None else list(argv)
    runtime.configure()
    if args.command == "omniglot":
        alphabets = omniglot.SPLITS[args.split]
        args.protocol_text = (
            f"within-alphabet episodes on the {args.split} alphabets {alphabets}, {args.queries} queries per class"
        )
        write_report(
            args, evaluate_classification(args, omniglot.EpisodeSampler(omniglot.load(), args.split), "omniglot")
        )
    elif args.command == "glyphs":
        kind, name = ("thin-stroke ", "glyphs-thin") if args.thin else ("", "glyphs")
        args.protocol_text = (
            f"cross-domain: within-script episodes of {kind}Noto glyphs on the {args.split} scripts "
            f"{glyphs.SPLITS[args.split]}, {args.queries} queries per class ({glyphs.version(args.thin)}, "
            f"sha256 {glyphs.sha256(glyphs.build(omniglot.CACHE_DIR, args.thin))[:16]})"
        )
        sampler = glyphs.EpisodeSampler(glyphs.load(thin=args.thin), args.split)
        write_report(args, evaluate_classification(args, sampler, name), name)
    elif args.command == "folder":
        meta = json.loads((Path(args.dir) / f"{args.base}.json").read_text())
        channels, _, size = meta["input"]["shape"]
        data = folder.load(args.data, size, channels)
        names = meta["data"]["splits"][args.split]  # the split the base recorded, by class name
        sampler = folder.EpisodeSampler(data, [data.classes.index(n) for n in names])
        args.protocol_text = (
            f"episodes of the {args.split} split of {args.data} ({len(names)} classes), "
            f"{args.queries} queries per class"
        )
        write_report(args, evaluate_classification(args, sampler, "folder"))  # NAME.eval.json: /v1/models shows it
    elif args.command == "sinusoid":
        args.protocol_text = f"fresh tasks (amplitude 0.1-5, phase 0-pi, x in -5..5), {args.queries} query points"
        write_report(args, evaluate_sinusoid(args))
    elif args.command == "omniglot-runs":
        omniglot_runs(args)
    else:
        print(omniglot.make_runs(omniglot.load(), args.split, Path(args.out), args.runs, args.seed))


if __name__ == "__main__":
    main()
