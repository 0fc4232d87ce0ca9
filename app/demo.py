"""A round trip over HTTP: `python -m app.demo [--url URL] [--key KEY]`.

Adapts omniglot-conv4 to a 20-way 1-shot task from a test alphabet (Greek or
Early Aramaic: characters the base never trained on), posting the original PNG
drawings, then predicts 5 other drawings of each character and prints the
accuracy; then fits a sinusoid from 5 points and prints the MSE.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from models.research import omniglot
from rapid_adapt_client import Client, image_input


def omniglot_task(seed: int, n_way: int = 20, n_query: int = 5, split: str = "test"):
    """-> support examples and (query inputs, true labels), labels are character names."""
    ds = omniglot.load()
    support_ids, query_ids = omniglot.EpisodeSampler(ds, split).sample_ids(
        n_way, 1, n_query, torch.Generator().manual_seed(seed)
    )
    name = lambda i: ds.char_names[int(ds.char[i])]
    png = lambda i: image_input(omniglot.original_png(ds.files[i]))
    support = [{"input": png(i), "label": name(i)} for i, _, _ in support_ids]
    return support, [png(i) for i, _, _ in query_ids], [name(i) for i, _, _ in query_ids]


def page_examples(per_character: int = 2, seed: int = 0) -> dict:
    """Drawings of the test alphabets (never trained on) for the page's "random episode" button:
    {alphabet: {character: [PNG base64, ...]}}, `per_character` drawers each."""
    ds = omniglot.load()
    sampler = omniglot.EpisodeSampler(ds, "test")
    gen = torch.Generator().manual_seed(seed)
    out: dict = {}
    for c, ids in sorted(sampler.by_char.items()):
        alphabet_name, character = ds.char_names[c].split("/")
        picks = ids[torch.randperm(len(ids), generator=gen)[:per_character]].tolist()
        out.setdefault(alphabet_name, {})[character] = [
            image_input(omniglot.original_png(ds.files[i]))["image"] for i in picks
        ]
    return out


def alphabet(labels: list[str]) -> str:
    """The alphabet of a task whose labels are "Alphabet/characterNN"."""
    return " and ".join(sorted({label.split("/")[0].replace("_", " ") for label in labels}))


def sinusoid_task(seed: int, k_shot: int = 5, n_query: int = 100):
    rng = random.Random(seed)
    amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0, math.pi)
    f = lambda x: amp * math.sin(x - phase)
    xs = [rng.uniform(-5, 5) for _ in range(k_shot + n_query)]
    return (
        [{"input": [x], "target": f(x)} for x in xs[:k_shot]],
        [[x] for x in xs[k_shot:]],
        [f(x) for x in xs[k_shot:]],
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m app.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", default="demo-key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-page-examples", metavar="PATH", help="write the page's example drawings there, and stop")
    args = p.parse_args(argv)
    if args.write_page_examples:
        Path(args.write_page_examples).write_text(json.dumps(page_examples(), separators=(",", ":")))
        return
    with Client(args.url, api_key=args.key) as c:
        support, queries, truth = omniglot_task(args.seed)
        t = time.perf_counter()
        a = c.create_adaptation("omniglot-conv4", support, wait=30)
        ms, compute = 1000 * (time.perf_counter() - t), a["metrics"]["adaptation_ms"]
        print(
            f"omniglot-conv4: adaptation {a['id']} {a['status']} in {ms:.0f} ms ({len(a['classes'])} "
            f"{alphabet(truth)} characters, 1 drawing each; worker compute {compute:.1f} ms)"
        )
        preds = c.predict(a["id"], queries)
        acc = sum(pr["label"] == y for pr, y in zip(preds, truth)) / len(truth)
        print(
            f"omniglot-conv4: query accuracy {100 * acc:.1f}% on {len(truth)} new drawings "
            f"(chance {100 / len(a['classes']):.0f}%)"
        )
        support, queries, truth = sinusoid_task(args.seed)
        a = c.create_adaptation("sinusoid-mlp", support, wait=30)
        preds = c.predict(a["id"], queries)
        mse = sum((pr["value"] - y) ** 2 for pr, y in zip(preds, truth)) / len(truth)
        print(
            f"sinusoid-mlp: adaptation {a['id']} {a['status']}; "
            f"MSE {mse:.3f} on {len(truth)} query points from 5 examples"
        )


if __name__ == "__main__":
    main()
