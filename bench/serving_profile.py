"""Where a warm 20-image prediction's time goes, in process (issue 31, part 4):
`python -m bench.serving_profile`. Medians of 200 calls of each step of the served path
(decoding, the predictor's pass, the answer) on one torch thread, as an API process runs it, and
the bare forward pass on one and two threads (the naive loop's); the HTTP round trip they are
compared with is bench.run's section C. Then the ceiling of served images/s with HTTP taken away:
two processes of one torch thread (as the API runs) passing the same 20 images over and over,
with and without decoding them from PNG each time, against the bare pass on two threads. Writes
bench/results/serving_profile.md and .json."""

from __future__ import annotations

import json
import multiprocessing
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


def served_steps():
    """The base, adapted weights, the 20 posted images and what decoding them needs."""
    reg = registry.shipped()
    model, _ = reg.load("omniglot-conv4")
    ds = omniglot.load()
    spec = spec_of(reg, "omniglot-conv4", ["model"])
    inputs = [ImageInput(**png_b64(ds, i)) for i in range(20)]
    limits, fields = Limits.of(Settings()), [["inputs", i] for i in range(20)]
    fast = adapt(model, ds.images[:20], torch.arange(20)).fast
    return model, fast, spec, inputs, limits, fields


def sustained(decode: bool, seconds: float, ready, results) -> None:
    """One process of one torch thread: images/s passing (and with `decode`, first decoding) the
    20 posted images over and over for `seconds`, started when every process is ready."""
    runtime.configure(1)
    model, fast, spec, inputs, limits, fields = served_steps()
    x = batch(inputs, spec, limits, fields)
    ready.wait()
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        forward_merged(model, [(fast, batch(inputs, spec, limits, fields) if decode else x)], 64)
        n += 1
    results.put(20 * n / (time.perf_counter() - began))


def ceiling(seconds: float = 5.0) -> dict[str, float]:
    """Images/s of two such processes together, passing only and decoding and passing."""
    ctx, out = multiprocessing.get_context("spawn"), {}
    for decode in (False, True):
        ready, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=sustained, args=(decode, seconds, ready, results)) for _ in range(2)]
        for proc in procs:
            proc.start()
        out["decode and pass" if decode else "pass only"] = sum(results.get() for _ in procs)
        for proc in procs:
            proc.join()
    return out


def main() -> None:
    runtime.configure(1)  # an API process's torch threads (TORCH_THREADS)
    model, fast, spec, inputs, limits, fields = served_steps()
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
    bare = 20 / res["bare forward pass, 2 threads (the naive loop's)"] * 1000
    print("two processes passing, then decoding and passing, 5 s each ...", flush=True)
    top = ceiling()
    res["ceiling_images_per_s"] = top | {"bare pass, 2 threads": bare}
    top_rows = [f"| {name} | {v:.0f} | {v / bare:.2f} |" for name, v in top.items()]
    text = "\n".join([
        "# Serving profile", "",
        f"`python -m bench.serving_profile` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: a warm "
        "20-image Omniglot prediction's steps in process, medians of 200 calls.", "",
        "| step | ms |", "| --- | --- |", *rows, "",
        "Served images/s with HTTP taken away: two processes of one torch thread, as the API runs, each "
        "passing the same 20 images over and over for 5 s (sustained, so decoding and the pass also evict "
        "each other's caches), against the bare pass on two threads (its median above).", "",
        "| two processes | images/s | of the bare pass |", "| --- | --- | --- |", *top_rows,
        f"| bare pass, 2 threads | {bare:.0f} | 1.00 |", "",
    ])  # fmt: skip
    save("serving_profile", text, res)  # prints it too


if __name__ == "__main__":
    main()
