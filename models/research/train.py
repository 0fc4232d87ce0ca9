"""Meta-training: `python -m models.train FAMILY ...`: omniglot, sinusoid, folder (your images) or symbols
(the generalist: models/research/symbols.py) meta-trains a base; omniglot-transfer, sinusoid-transfer or
folder-transfer trains the transfer baseline it is compared with.

The outer loop samples a batch of tasks, runs `adapt` in train mode (second
order unless --algorithm fomaml or --first-order), and minimises the query
loss after the inner steps (`step_weights`). MAML and first-order MAML keep φ
fixed at its initial value; Meta-SGD learns it with θ.

Validation runs every --val-every iterations on held-out data (Omniglot: the
validation alphabets; sinusoid: a separate seeded stream of tasks); the best
checkpoint is kept and written with its JSON, and the curves go to a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .. import checkpoint, familiarity, runtime
from ..adapt import adapt
from ..augment import affine_jitter
from ..nets import Base, Conv4, SinusoidMLP
from ..preprocess import PREPROCESSING, RESIZED
from . import folder, glyphs, omniglot, sinusoid, symbols

ALGORITHMS = ("maml", "fomaml", "metasgd")
IMAGE_FAMILIES = ("omniglot", "folder", "symbols")  # Conv4 bases of images
FINE_TUNE = {
    "adapts": "the last block (conv and group norm) and the prototype head",
    "step_sizes": "hand-set: 0.2 for every tail tensor and step (meta-learning them did not beat it on validation)",
    "augmentation": "affine jitter and stroke width (models/augment.py), `views` copies of the support set (fewer "
    "where that would make over 2,000 augmented images a step, never fewer than 4)",
}


class Family:
    """What the trainer needs from a task family: tasks to train on, and a
    validation score (higher is better) with its display name. With `keep_last`
    the last checkpoint is kept instead of the best-scoring one."""

    keep_last = False

    def train_batch(self, gen): ...  # on the CPU; the trainer moves it to --device
    def validate(self, model: Base) -> float: ...


def validation_tasks(sampler, n_way: int, args) -> list[list[torch.Tensor]]:
    """The validation score's fixed episodes, N-way 1-shot with 5 queries, the same for every run of a seed."""
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    return [[t.to(args.device) for t in sampler.sample(n_way, 1, 5, gen)] for _ in range(args.val_tasks)]


class OmniglotFamily(Family):
    def __init__(self, args):
        ds = omniglot.load()
        self.args = args
        self.keep_last = "val" in args.train_split.split("+")  # validation is then no held-out score
        self.metric = "val 20-way 1-shot accuracy" + (" (alphabet seen in training)" if self.keep_last else "")
        self.train = omniglot.EpisodeSampler(
            ds, args.train_split, rotations=True, jitter=True, flips=args.flips, shear=args.shear
        )
        self.val = omniglot.EpisodeSampler(ds, "val")
        self.images, self.images_from = ds.images_of(args.train_split), f"Omniglot, {args.train_split}"
        self.val_tasks = validation_tasks(self.val, 20, args)

    def train_batch(self, gen):
        a = self.args
        eps = [self.train.sample(a.ways, a.shots, a.queries, gen) for _ in range(a.meta_batch)]
        return [torch.stack(t) for t in zip(*eps)]

    def validate(self, model):
        correct = 0.0
        for sx, sy, qx, qy in self.val_tasks:
            fast = adapt(model, sx, sy).fast
            with torch.no_grad():
                out = model.fast_forward(fast, model.embed(qx).unsqueeze(0))[0]
            correct += (out.argmax(-1) == qy).float().mean().item()
        return correct / len(self.val_tasks)


class FolderFamily(OmniglotFamily):
    """Your images (models/research/folder.py): episodes of the training split's classes with
    the affine jitter; validation on the validation split, 5-way 1-shot (fewer ways where the
    split has fewer classes)."""

    def __init__(self, args):
        self.args = args
        self.data = folder.load(args.data, args.size, 3 if args.color == "rgb" else 1)
        self.splits = folder.splits(self.data, args.seed)
        classes = [c for s in args.train_split.split("+") for c in self.splits[s]]
        self.keep_last = "val" in args.train_split.split("+")
        self.train = folder.EpisodeSampler(self.data, classes, jitter=True)
        self.images = self.data.images_of(classes)
        self.images_from = f"{args.data}, {args.train_split}"
        self.val = folder.EpisodeSampler(self.data, self.splits["val"])
        self.ways = min(args.ways, self.train.max_ways())
        val_ways = min(5, self.val.max_ways())
        self.metric = f"val {val_ways}-way 1-shot accuracy" + (" (classes seen in training)" if self.keep_last else "")
        self.val_tasks = validation_tasks(self.val, val_ways, args)

    def train_batch(self, gen):
        a = self.args
        eps = [self.train.sample(self.ways, a.shots, a.queries, gen) for _ in range(a.meta_batch)]
        return [torch.stack(t) for t in zip(*eps)]


class SymbolsFamily(OmniglotFamily):
    """The generalist base's tasks (models/research/symbols.py): each episode is drawn within one
    group of one source, the source picked by SHARES; rotations and mirror images are new classes,
    as in Omniglot's recipe. Validation: the glyph benchmark's val scripts, 10-way 1-shot."""

    SHARES = {"handwriting": 0.3, "typeset": 0.45, "silhouettes": 0.25}

    def __init__(self, args):
        self.args, self.keep_last = args, False
        self.data = symbols.load()
        self.samplers = {
            source: omniglot.EpisodeSampler(
                self.data.ds, tuple(groups), rotations=True, jitter=True, flips=args.flips, shear=args.shear
            )
            for source, groups in self.data.sources.items()
        }
        self.shares = torch.tensor([self.SHARES[source] for source in self.samplers])
        self.images, self.images_from = self.data.ds.images, symbols.VERSION
        self.metric = "glyphs val 10-way 1-shot accuracy"
        self.val_tasks = validation_tasks(glyphs.EpisodeSampler(glyphs.load(), "val"), 10, args)

    def train_batch(self, gen):
        a, names = self.args, list(self.samplers)
        picks = torch.multinomial(self.shares, a.meta_batch, replacement=True, generator=gen).tolist()
        eps = [self.samplers[names[i]].sample(a.ways, a.shots, a.queries, gen) for i in picks]
        return [torch.stack(t) for t in zip(*eps)]


class SinusoidFamily(Family):
    metric = "val -MSE after default steps"

    def __init__(self, args):
        self.args = args
        gen = torch.Generator().manual_seed(20_000 + args.seed)
        self.val_tasks = [t.to(args.device) for t in sinusoid.sample_tasks(args.val_tasks, args.shots, 50, gen)]

    def train_batch(self, gen):
        return sinusoid.sample_tasks(self.args.meta_batch, self.args.shots, self.args.queries, gen)

    def validate(self, model):
        sx, sy, qx, qy = self.val_tasks
        fast = adapt(model, sx, sy).fast
        with torch.no_grad():
            return -model.loss(model.fast_forward(fast, qx), qy).mean().item()


def architecture_kwargs(args) -> dict:
    kwargs = {"steps": args.steps, "step_size": args.step_size}
    if args.channels is not None and not args.family.startswith("sinusoid"):
        kwargs["channels"] = args.channels  # only when asked: the committed bases' records predate the option
    if args.family.startswith(("omniglot", "symbols")):
        return kwargs
    if args.family.startswith("folder"):
        return kwargs | {"in_channels": 3 if args.color == "rgb" else 1, "size": args.size}
    return kwargs | ({"adapt": args.adapt} if args.family == "sinusoid" else {})


def training_record(args) -> dict:
    """The command's arguments, as the JSON records them."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}


def step_weights(steps: int) -> torch.Tensor:
    """Weights of the query loss after 0..steps inner steps in the outer objective: 1 after
    step 1 and after the last, 0.1 elsewhere, so that a single step is already useful."""
    w = torch.full((steps + 1,), 0.1)
    w[1], w[-1] = 1.0, 1.0
    return w / w.sum()


def meta_train(args) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.family in IMAGE_FAMILIES:
        model = Conv4(**architecture_kwargs(args))
        family = {"omniglot": OmniglotFamily, "folder": FolderFamily, "symbols": SymbolsFamily}[args.family](args)
    else:
        model, family = SinusoidMLP(steps=args.steps, step_size=args.step_size, adapt=args.adapt), SinusoidFamily(args)
    if args.init:
        start, init_meta = checkpoint.load(Path(args.out) / args.init)
        kwargs = architecture_kwargs(args)  # the start's serving settings (support_shifts, tune_views) may differ
        if {k: init_meta["architecture_kwargs"].get(k) for k in kwargs} != kwargs:
            raise SystemExit(
                f"--init {args.init}: architecture {init_meta['architecture_kwargs']} != {architecture_kwargs(args)}"
            )
        model.load_state_dict(start.state_dict())
        args.init_from = {k: init_meta.get(k) for k in ("name", "algorithm", "training", "validation")}
    model.to(args.device)
    learn_phi = args.algorithm == "metasgd"
    model.step_sizes.requires_grad_(learn_phi)
    first_order = args.first_order or args.algorithm == "fomaml"
    theta = [p for n, p in model.named_parameters() if not n.startswith("step_sizes.")]
    groups = [{"params": theta}] + (
        [{"params": list(model.step_sizes.parameters()), "lr": args.phi_lr}] if learn_phi else []
    )
    opt = torch.optim.Adam(groups, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / args.iterations)))
    weights = step_weights(args.steps).to(args.device)
    best, log = -math.inf, {"iteration": [], "train_loss": [], "val": []}
    started, running, skipped = time.time(), None, 0
    if args.init:  # the starting point is the score to beat
        model.eval()
        best = family.validate(model)
        log["iteration"].append(0)
        log["train_loss"].append(math.nan)
        log["val"].append(best)
        save(model, args, family, best, log, started, skipped)
    bar = tqdm(range(1, args.iterations + 1), desc=f"meta-train {args.name}", mininterval=2)
    for it in bar:
        model.train()
        sx, sy, qx, qy = (t.to(args.device) for t in family.train_batch(gen))
        adapted = adapt(model, sx, sy, args.steps, train=True, first_order=first_order, trajectory=True)
        q_feats = model.embed(qx.flatten(0, 1)).unflatten(0, qx.shape[:2])
        losses = torch.stack([model.loss(model.fast_forward(f, q_feats), qy).mean() for f in adapted.trajectory])
        loss = (weights * losses).sum()
        opt.zero_grad()
        loss.backward()
        if torch.isfinite(nn.utils.clip_grad_norm_(model.parameters(), args.clip)):
            opt.step()
        else:
            skipped += 1  # an inner loop that diverged on this batch: no usable gradient
        sched.step()
        running = losses[-1].item() if running is None else 0.98 * running + 0.02 * losses[-1].item()
        if it % args.val_every == 0 or it == args.iterations:
            model.eval()
            score = family.validate(model)
            log["iteration"].append(it)
            log["train_loss"].append(running)
            log["val"].append(score)
            if score > best or (family.keep_last and it == args.iterations):
                best = score  # with keep_last, the last save is the kept checkpoint and its score
                save(model, args, family, best, log, started, skipped)  # the best so far is always on disk
            bar.set_postfix(loss=f"{running:.3f}", val=f"{score:.4f}", best=f"{best:.4f}", skipped=skipped)
            bar.write(
                f"iteration {it}: train loss {running:.4f}, {family.metric} {score:.4f} (best {best:.4f}), "
                f"{time.time() - started:.0f} s"
            )
    out = Path(args.out) / args.name
    plot_curves(log, family.metric, out.with_suffix(".training.png"))
    size = out.with_suffix(".safetensors").stat().st_size
    print(f"saved {out}.safetensors ({size} bytes); best {family.metric} {best:.4f}")


def save(model: Base, args, family: Family, best: float, log: dict, started: float, skipped: int) -> None:
    arch = "conv4" if args.family in IMAGE_FAMILIES else "mlp"
    meta = {
        "name": args.name,
        "task": model.task,
        "family": args.family,
        "architecture": arch,
        "architecture_kwargs": architecture_kwargs(args),
        "algorithm": args.algorithm + ("-first-order" if args.first_order and args.algorithm != "fomaml" else ""),
        "adapted": sorted(model.step_sizes.keys()),
        "default_steps": args.steps,
        "learned_step_sizes": {
            n: {
                "per_step_mean": [round(v, 5) for v in a.detach().flatten(1).mean(1).tolist()],
                "min": round(a.min().item(), 5),
                "max": round(a.max().item(), 5),
            }
            for n, a in model.step_sizes.items()
        },
        "training": training_record(args),
        "training_seconds_to_best": round(time.time() - started, 1),
        "best_iteration": log["iteration"][-1],
        "skipped_non_finite_batches": skipped,
        "validation": {
            "metric": family.metric,
            "best": round(best, 5),
            "curve": dict(zip(log["iteration"], [round(v, 5) for v in log["val"]])),
        },
        "torch": torch.__version__,
    }
    if args.family == "omniglot":
        meta["data"] = {
            "sha256": omniglot.data_checksums(),
            "splits": omniglot.SPLITS,
            "trained_on": args.train_split,
            "preprocessing": PREPROCESSING,
        }
        meta["max_ways"] = model.max_ways
        meta["input"] = omniglot.input_record()
    if args.family == "symbols":
        meta["data"] = symbols_data_record(family.data)
        meta["max_ways"] = model.max_ways
        meta["input"] = omniglot.input_record()
    if args.family == "folder":
        meta["data"] = folder_data_record(family.data, family.splits, args.train_split)
        meta["max_ways"] = model.max_ways
        meta["input"] = folder.input_record(args.size, model.input_shape[0])
    if args.family in IMAGE_FAMILIES:
        meta["fine_tune"] = FINE_TUNE | {"views": model.tune_views}
        meta["auto"] = familiarity.record(model, family.images, family.images_from)
    checkpoint.save(model, meta, Path(args.out) / args.name)


def write_auto(args) -> None:
    """`python -m models.train auto --name NAME`: (re)write an image base's `auto` record from the
    images its JSON says it was trained on; its weights and the rest of its JSON stay as they are."""
    path = Path(args.out) / args.name
    model, meta = checkpoint.load(path)
    if meta.get("family") == "omniglot":
        ds, split = omniglot.load(), meta["data"]["trained_on"]
        images = ds.images_of(split)
        source = f"Omniglot, {split}"
    elif meta.get("family") == "symbols":
        images, source = symbols.load().ds.images, symbols.VERSION
    elif meta.get("family") == "folder":
        channels, _, size = meta["input"]["shape"]
        data, split = folder.load(args.data or meta["data"]["root"], size, channels), meta["data"]["trained_on"]
        names = [n for s in split.split("+") for n in meta["data"]["splits"][s]]
        images = data.images_of([data.classes.index(n) for n in names])
        source = f"{data.root}, {split}"
    else:
        raise SystemExit(
            f"{args.name}: `auto` statistics are for image bases trained here ({', '.join(IMAGE_FAMILIES)})"
        )
    shots = (
        meta.get("auto", {}).get("fine_tune_from_shots")
        if args.fine_tune_from_shots is None
        else args.fine_tune_from_shots
    )
    meta["auto"] = familiarity.record(model, images, source) | ({"fine_tune_from_shots": shots} if shots else {})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"{path}.json: auto from {meta['auto']['from']}")


def symbols_data_record(data: symbols.Symbols) -> dict:
    return {
        "version": symbols.VERSION,
        "images": len(data.ds.images),
        "classes": len(data.ds.char_names),
        "sha256": data.sha256,
        "sources": data.sources,
        "omniglot": {"sha256": omniglot.data_checksums(), "trained_on": symbols.OMNIGLOT_SPLIT},
        "excluded": symbols.EXCLUDED,
        "shares": SymbolsFamily.SHARES,
        "preprocessing": PREPROCESSING,
    }


def folder_data_record(data, splits: dict, trained_on: str) -> dict:
    return {
        "root": str(data.root),
        "images": len(data.files),
        "sha256": folder.content_sha256(data),
        "splits": {s: [data.classes[c] for c in cs] for s, cs in splits.items()},
        "trained_on": trained_on,
        "preprocessing": RESIZED,
    }


def train_transfer(args) -> None:
    """Plain transfer baselines: supervised pre-training of the same network on all meta-train
    data, saved as a checkpoint of the same architecture for the evaluation's transfer baseline
    (`"serve": false`). Omniglot: a classifier over every meta-train character and its rotations
    (with jitter); a folder: over every training class (with jitter). Sinusoid: regression on
    points pooled from random tasks."""
    if args.family == "sinusoid-transfer":
        return train_sinusoid_transfer(args)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.family == "omniglot-transfer":
        ds = omniglot.load()
        classes = ds.chars_of(omniglot.alphabets_of(args.train_split))
        x, c, rotations = ds.images, ds.char, 4
        data = {
            "sha256": omniglot.data_checksums(),
            "splits": omniglot.SPLITS,
            "trained_on": args.train_split,
            "preprocessing": PREPROCESSING,
        }
        extra = {"input": omniglot.input_record()}
    else:
        fd = folder.load(args.data, args.size, 3 if args.color == "rgb" else 1)
        splits = folder.splits(fd, args.seed)
        classes = [c for s in args.train_split.split("+") for c in splits[s]]
        x, c, rotations = fd.images, fd.label, 1
        data = folder_data_record(fd, splits, args.train_split)
        extra = {"input": folder.input_record(args.size, x.shape[1])}
    keep = torch.isin(c, torch.tensor(classes))
    x, c = x[keep], c[keep]
    remap = {ch: i for i, ch in enumerate(classes)}
    labels = torch.tensor([remap[int(v)] for v in c])
    model = Conv4(**architecture_kwargs(args))
    head = nn.Linear(model.dim, rotations * len(classes))
    opt = torch.optim.Adam([*model.body.parameters(), *head.parameters()], lr=args.lr)
    for _ in tqdm(range(args.epochs), desc="transfer pre-training"):
        for idx in torch.randperm(x.shape[0], generator=gen).split(128):
            rot = torch.randint(rotations, (len(idx),), generator=gen)
            xb = torch.stack([torch.rot90(x[i], int(r), dims=(1, 2)) for i, r in zip(idx, rot)])
            loss = F.cross_entropy(head(model.embed(affine_jitter(xb, gen))), labels[idx] * rotations + rot)
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta = {
        "name": args.name,
        "task": "classification",
        "family": args.family.removesuffix("-transfer"),
        "architecture": "conv4",
        "architecture_kwargs": architecture_kwargs(args),
        "algorithm": "transfer",
        "serve": False,
        "default_steps": args.steps,
        "training": training_record(args),
        "data": data,
        "max_ways": model.max_ways,
    } | extra
    checkpoint.save(model, meta, Path(args.out) / args.name)
    print(f"saved {Path(args.out) / args.name}.safetensors")


def train_sinusoid_transfer(args) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = SinusoidMLP(steps=args.steps, step_size=args.step_size)
    opt = torch.optim.Adam(model.net.parameters(), lr=args.lr)
    for _ in tqdm(range(args.iterations), desc="transfer pre-training", mininterval=2):
        _, _, x, y = sinusoid.sample_tasks(args.meta_batch, 0, args.shots + args.queries, gen)
        loss = F.mse_loss(model.net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {
        "name": args.name,
        "task": "regression",
        "family": "sinusoid",
        "architecture": "mlp",
        "architecture_kwargs": {"steps": args.steps, "step_size": args.step_size},
        "algorithm": "transfer",
        "serve": False,
        "default_steps": args.steps,
        "training": training_record(args),
    }
    checkpoint.save(model, meta, Path(args.out) / args.name)
    print(f"saved {Path(args.out) / args.name}.safetensors")


def plot_curves(log: dict, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(log["iteration"], log["train_loss"])
    ax[0].set_title("train query loss (final step, EMA)")
    ax[1].plot(log["iteration"], log["val"])
    ax[1].set_title(metric)
    for a in ax:
        a.set_xlabel("iteration")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "family",
        choices=[*IMAGE_FAMILIES, "sinusoid", "omniglot-transfer", "sinusoid-transfer", "folder-transfer", "auto"],
        help="what to train: a base (omniglot, sinusoid, folder: your ROOT/<class>/*.png; symbols: the generalist) "
        "or its transfer baseline; "
        "auto: rewrite the `auto` statistics of the image base --name from its training images",
    )
    p.add_argument("--data", type=Path, help="folder: ROOT/<class>/*.png or ROOT/<group>/<class>/*.png")
    p.add_argument("--size", type=int, default=64, help="folder: image side, 28 to 84 pixels")
    p.add_argument("--color", choices=["rgb", "gray"], default="rgb", help="folder: RGB or grayscale input")
    p.add_argument("--name", required=True, help="checkpoint name, e.g. omniglot-conv4")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="metasgd")
    p.add_argument("--first-order", action="store_true", help="drop second-order terms of the inner loop")
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=20, help="the *-transfer baselines of omniglot and folder")
    p.add_argument("--steps", type=int, default=10, help="inner steps (the base's default and maximum)")
    p.add_argument("--step-size", type=float, default=None, help="initial (MAML: fixed) inner step size")
    p.add_argument(
        "--adapt", choices=["all", "head"], default="all", help="sinusoid: which weights the inner loop adapts"
    )
    p.add_argument(
        "--train-split",
        default="train",
        choices=["train", "train+val"],
        help="omniglot: alphabets to meta-train on; train+val (the final recipe) keeps the last checkpoint",
    )
    p.add_argument(
        "--flips", action="store_true", help="omniglot: mirror images as new classes too (8 variants per character)"
    )
    p.add_argument(
        "--shear", type=float, default=0.0, help="omniglot: range of the random horizontal shear in the jitter"
    )
    p.add_argument(
        "--fine-tune-from-shots",
        type=int,
        default=None,
        help="auto: fine-tune support sets with at least this many shots per class, familiar or not (chosen on "
        "validation; 0 removes it; default: keep the base's)",
    )
    p.add_argument("--channels", type=int, default=None, help="image bases: the conv blocks' width (default 64)")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--meta-batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--phi-lr", type=float, default=None, help="outer learning rate of the step sizes (default step_size/100)"
    )
    p.add_argument("--clip", type=float, default=1.0, help="outer gradient-norm clip")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="continue meta-training from this checkpoint in --out (same architecture)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--device", default="cpu", help="torch device for meta-training, e.g. cuda (episodes are sampled on the CPU)"
    )
    p.add_argument("--out", default=str(checkpoint.CHECKPOINT_DIR))
    args = p.parse_args(argv)
    sin = args.family.startswith("sinusoid")
    defaults = {
        "step_size": 0.01 if sin else 0.1,
        "shots": 5 if sin else 1,
        "queries": 10 if sin else 5,
        "meta_batch": 25 if sin else 1,
    }
    defaults["phi_lr"] = (args.step_size or defaults["step_size"]) / 100
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    runtime.configure(args.threads)
    if args.family == "auto":
        return write_auto(args)
    (train_transfer if args.family.endswith("-transfer") else meta_train)(args)


if __name__ == "__main__":
    main()
