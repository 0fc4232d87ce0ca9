"""Predictions in the API process.

One thread per process does all the work of a prediction request: it reads the
adaptation's record, decodes the inputs, finds the adapted weights, runs the
forward pass and hands back plain lists, so a request costs the event loop one
hand-off and one callback (a thread-pool handler waiting on a separate batcher
thread costs four hand-offs; docs/experiments.md has the measurement).

The thread takes every request waiting at that moment and embeds all their
images together (also across different adaptations of one base; in equal passes
of at most `predict_max_batch` images, past which a pass only gets slower per
image on CPU), then applies each adaptation's head. Adapted weights come from a
bounded in-process LRU, then the weights cache in Redis; weights evicted from
Redis are rebuilt from the stored support set with the worker's `run_adaptation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from models import registry

from ..core.adaptation import run_adaptation
from ..core.config import Settings
from ..core.store import Store
from . import metrics
from .errors import ApiError
from .inputs import batch
from .records import owned

log = logging.getLogger("rapid_adapt.api")


class WeightsLRU:
    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: str):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: str, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self.lock:
            self.items.pop(key, None)


class Outcome(NamedTuple):
    record: dict
    x: torch.Tensor  # the decoded inputs, to predict again without decoding after waiting for the job
    outputs: list | None  # per input: class probabilities or values; None while the adaptation has not succeeded


@dataclass
class Job:
    aid: str
    tenant: str
    inputs: list | torch.Tensor  # as posted, or already decoded
    reply: Callable[[Outcome | BaseException], None]  # called once, from the predictor thread
    record: dict | None = None
    x: torch.Tensor | None = None
    fast: dict | None = None


@torch.inference_mode()
def forward_merged(model, items: list[tuple[dict, torch.Tensor]], max_batch: int) -> list[torch.Tensor]:
    """The outputs of each (stored adaptation, inputs) pair. The part of the network no
    adaptation changes (`Base.shared`) runs over the inputs of all of them together, in
    equal passes of at most max_batch (80 as 40 + 40); the rest under each adaptation."""
    xs = [x for _, x in items]
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    metrics.PREDICT_BATCH.observe(x.shape[0])
    passes = -(-x.shape[0] // max_batch)
    h = model.shared(x) if passes == 1 else torch.cat([model.shared(c) for c in x.tensor_split(passes)])
    outs = []
    for (stored, _), hi in zip(items, h.split([len(x) for x in xs])):
        fast = model.from_stored(stored)
        outs.append(model.fast_forward(fast, model.finish(hi, fast).unsqueeze(0))[0])
    return outs


def outputs(record: dict, out: torch.Tensor) -> list:
    return torch.softmax(out, -1).tolist() if record["task"] == "classification" else out[:, 0].tolist()


class Predictor:
    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store, self.lru = settings, store, WeightsLRU(settings.lru_size)
        self.q: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._loop, name="predictor", daemon=True).start()

    async def predict(self, aid: str, tenant: str, inputs: list | torch.Tensor, timeout: float = 30.0) -> Outcome:
        """From the event loop: raises what the thread raised (404, 422, ...), TimeoutError past `timeout`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.q.put(Job(aid, tenant, inputs, lambda result: _reply(loop, fut, result)))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            raise TimeoutError("prediction timed out") from None

    def forget(self, aid: str) -> None:
        self.lru.drop(aid)

    def weights(self, record: dict) -> dict[str, torch.Tensor]:
        """An adaptation's tensors as stored (`Base.to_stored`: the compact form is what the
        LRU holds)."""
        aid = record["id"]
        fast = self.lru.get(aid)
        if fast is not None:
            metrics.CACHE.labels("lru_hit").inc()
            return fast
        fast = self.store.weights(aid)
        if fast is not None:
            metrics.CACHE.labels("redis_hit").inc()
        else:
            metrics.CACHE.labels("miss_readapt").inc()
            support = self.store.support(aid)
            if support is None:
                raise ApiError(404, "not_found", "adaptation not found")
            fast, _ = run_adaptation(record, support)
            self.store.put_weights(aid, fast, self.store.ttl(aid))
        self.lru.put(aid, fast)
        return fast

    # ---- the predictor thread ------------------------------------------------
    def _loop(self) -> None:
        while True:
            groups: dict[str, list[Job]] = {}
            for job in self._take():
                groups.setdefault(job.record["model"], []).append(job)
            for name, group in groups.items():
                try:
                    outs = forward_merged(
                        registry.load(name)[0], [(j.fast, j.x) for j in group], self.settings.predict_max_batch
                    )
                except Exception as exc:  # never leave a request hanging
                    log.exception("prediction failed")
                    for job in group:
                        job.reply(exc)
                    continue
                for job, out in zip(group, outs):
                    job.reply(Outcome(job.record, job.x, outputs(job.record, out)))

    def _take(self) -> list[Job]:
        """Wait for a job, then take every job waiting, up to a full pass of images.
        Jobs that fail or whose adaptation has not succeeded are answered at once."""
        jobs, n, block = [], 0, True
        while n < self.settings.predict_max_batch:
            try:
                job = self.q.get(block=block)
            except queue.Empty:
                break
            if self._prepare(job):
                jobs.append(job)
                n += len(job.x)
                block = False
        return jobs

    def _prepare(self, job: Job) -> bool:
        try:
            job.record = owned(self.store, job.aid, job.tenant)
            job.x = (
                job.inputs
                if isinstance(job.inputs, torch.Tensor)
                else batch(
                    job.inputs,
                    registry.load(job.record["model"])[1],
                    self.settings.max_image_pixels,
                    [["inputs", i] for i in range(len(job.inputs))],
                )
            )
            if job.record["status"] != "succeeded":
                job.reply(Outcome(job.record, job.x, None))
                return False
            job.fast = self.weights(job.record)
            return True
        except Exception as exc:
            job.reply(exc)
            return False


def _reply(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result) -> None:
    """From the predictor thread: settle the request's future on its event loop."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: the process is shutting down
        loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future, result) -> None:
    if fut.done():  # the request was cancelled (client gone) or timed out
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
