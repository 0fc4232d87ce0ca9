"""Where a warm 20-image prediction's time goes, in process (issue 31, part 4):
`python -m bench.serving_profile`. Medians of 200 calls of each step of the served path
(decoding, the predictor's pass, the answer) on one torch thread, as an API process runs it, and
the bare forward pass on one and two threads (the naive loop's); the HTTP round trip they are
compared with is bench.run's section C. Writes bench/results/serving_profile.md and .json."""

from __future__ import annotations

import json
import os
import statistics
import time

import orjson
import torch

from app.api.bases import spec_of
from app.api.inputs import Limits, batch
from app.api.predictor import forward_merged
from app.api.schemas import ImageInput, PredictionRequest
from app.core.config import Settings
from models import registry, runtime
from models.adapt import adapt, predict
from models.exported import outputs
from models.research import omniglot

from .report import save
from .run import png_b64


def median_ms(f, n: int = 200) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    runtime.configure(1)  # an API process's torch threads (TORCH_THREADS)
    reg = registry.shipped()
    model, _ = reg.load("omniglot-conv4")
    ds = omniglot.load()
    spec = spec_of(reg, "omniglot-conv4", ["model"])
    inputs = [ImageInput(**png_b64(ds, i)) for i in range(20)]
    limits, fields = Limits.of(Settings()), [["inputs", i] for i in range(20)]
    fast = adapt(model, ds.images[:20], torch.arange(20)).fast
    record = {"task": "classification", "classes": [f"c{k}" for k in range(20)], "model": "omniglot-conv4"}
    body = json.dumps({"inputs": [v.model_dump() for v in inputs]}).encode()
    x = batch(inputs, spec, limits, fields)
    out = forward_merged(model, [(fast, x)], 64)[0]
    answer = outputs(record, out)
    steps = {
        "parse and validate the 20-PNG body": lambda: PredictionRequest.model_validate(orjson.loads(body)),
        "decode 20 PNGs (base64, PIL, ink framing)": lambda: batch(inputs, spec, limits, fields),
        "the predictor's pass, 1 thread": lambda: forward_merged(model, [(fast, x)], 64),
        "scores and JSON of the answer": lambda: orjson.dumps({"predictions": outputs(record, out)}),
        "bare forward pass, 1 thread": lambda: predict(model, fast, x),
    }
    res = {name: median_ms(f) for name, f in steps.items()}
    runtime.configure(2)
    res["bare forward pass, 2 threads (the naive loop's)"] = median_ms(lambda: predict(model, fast, x))
    del answer
    rows = [f"| {name} | {ms:.2f} |" for name, ms in res.items()]
    text = "\n".join([
        "# Serving profile", "",
        f"`python -m bench.serving_profile` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: a warm "
        "20-image Omniglot prediction's steps in process, medians of 200 calls.", "",
        "| step | ms |", "| --- | --- |", *rows, "",
    ])  # fmt: skip
    save("serving_profile", text, res)  # prints it too


if __name__ == "__main__":
    main()
