"""Meta-training the fine-tuning step sizes: `python -m models.train tune --init BASE ...`.

θ stays as meta-trained on Omniglot (so the `fast` mode and every figure of it stay
exactly as they were); only `tune_step_sizes` learn: one step size per tail tensor and
per step, Meta-SGD's learned rates at the granularity of layers, 80 numbers. The outer
loss is the query loss after the fine-tune inner loop, second order (the tail is small,
and the trunk's features are computed once without a graph).

The tasks are what the fine-tune mode is for: images unlike the base's training data,
here the Noto glyphs' training scripts (Armenian, Hebrew), 5 to 20 ways, 1 to 5 shots.
Omniglot episodes drawn in random styles were tried first and did not transfer
(docs/experiments.md). The checkpoint is chosen on the validation scripts (Thai,
Cherokee), 10-way 1- and 5-shot; the test scripts are never seen.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import checkpoint
from ..adapt import adapt, predict
from . import glyphs


class TuneFamily:
    def __init__(self, args):
        self.args = args
        ds = glyphs.load()
        self.train = glyphs.EpisodeSampler(ds, "train")
        val = glyphs.EpisodeSampler(ds, "val")
        gen = torch.Generator().manual_seed(30_000 + args.seed)
        half = args.val_tasks // 2
        self.val_tasks = [val.sample(10, k, 10, gen) for k in (1, 5) for _ in range(half)]

    def task(self, gen):
        """An episode of 5 to 20 ways and 1 to 5 shots of the training scripts."""
        n_way = int(torch.randint(5, 21, (1,), generator=gen))
        k_shot = int(torch.randint(1, 6, (1,), generator=gen))
        return self.train.sample(n_way, k_shot, 5, gen)

    def validate(self, model) -> float:
        """Mean query accuracy of the fine-tune mode over the validation tasks (1- and 5-shot)."""
        acc = []
        for i, (sx, sy, qx, qy) in enumerate(self.val_tasks):
            fast = adapt(model, sx, sy, mode="fine-tune", seed=i).fast
            acc.append((predict(model, fast, qx).argmax(-1) == qy).float().mean().item())
        return sum(acc) / len(acc)


def meta_train_tune(args) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if not args.init:
        raise SystemExit("tune needs --init BASE: the meta-trained base whose tail step sizes to learn")
    model, meta = checkpoint.load(Path(args.out) / args.init)
    model.requires_grad_(False)
    phi = list(model.tune_step_sizes.parameters())
    for p in phi:
        p.requires_grad_(True)
    family = TuneFamily(args)
    opt = torch.optim.Adam(phi, lr=args.lr)
    started = time.time()
    best = family.validate(model)
    log = {"iteration": [0], "train_loss": [math.nan], "val": [best]}
    save(model, meta, args, best, log, started)
    print(f"iteration 0 (the hand-set step sizes): val {best:.4f}")
    running = None
    bar = tqdm(range(1, args.iterations + 1), desc=f"meta-train {args.name} (fine-tune step sizes)", mininterval=2)
    for it in bar:
        loss = 0.0
        for _ in range(args.meta_batch):
            sx, sy, qx, qy = family.task(gen)
            fast = adapt(model, sx, sy, mode="fine-tune", train=True, seed=int(torch.randint(1 << 30, (1,)))).fast
            out = model.fast_forward(fast, model.embed_adapted(qx, fast).unsqueeze(0))[0]
            loss = loss + F.cross_entropy(out, qy) / args.meta_batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in phi:
                p.clamp_(min=0.0)  # a negative step size climbs the loss
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if it % args.val_every == 0 or it == args.iterations:
            score = family.validate(model)
            log["iteration"].append(it)
            log["train_loss"].append(running)
            log["val"].append(score)
            if score > best:
                best = score
                save(model, meta, args, best, log, started)
            rates = ", ".join(f"{n}: {p[0].item():.3f}..{p[-1].item():.3f}" for n, p in model.tune_step_sizes.items())
            bar.write(f"iteration {it}: train query loss {running:.4f}, val {score:.4f} (best {best:.4f}); {rates}")
    print(f"saved {Path(args.out) / args.name}.safetensors; best val {best:.4f}")


def save(model, meta: dict, args, best: float, log: dict, started: float) -> None:
    """The base as it was, plus its learned tail step sizes and their record in the JSON."""
    meta = meta | {
        "name": args.name,
        "fine_tune": {
            "algorithm": "Meta-SGD step sizes per tail tensor and step, θ frozen, second order",
            "steps": model.tune_steps,
            "views": model.tune_views,
            "learned_step_sizes": {
                n: [round(v, 5) for v in p.detach().tolist()] for n, p in model.tune_step_sizes.items()
            },
            "training": {k: v for k, v in vars(args).items() if k != "func"},
            "tasks": "Noto glyphs, training scripts " + ", ".join(glyphs.SPLITS["train"]),
            "validation": {
                "metric": "Noto glyphs, validation scripts, 10-way 1- and 5-shot, fine-tune accuracy",
                "best": round(best, 5),
                "curve": dict(zip(log["iteration"], [round(v, 5) for v in log["val"]])),
            },
            "training_seconds": round(time.time() - started, 1),
        },
    }
    checkpoint.save(model, meta, Path(args.out) / args.name)
    (Path(args.out) / f"{args.name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
