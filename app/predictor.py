"""Predictions in the API process.

Adapted weights come through a bounded in-process LRU, then the weights cache
in Redis; weights evicted from Redis are rebuilt from the stored support set
with the same `run_adaptation` the worker uses. Tensor work never runs on the
event loop: one batcher thread takes every request waiting at that moment,
embeds all their images together (also across different adaptations of one
base; in passes of at most `predict_max_batch` images, past which a pass only
gets slower per image on CPU), then applies each adaptation's head.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future

import torch

from models import registry

from . import metrics
from .adaptation import run_adaptation
from .errors import ApiError
from .settings import Settings
from .store import Store


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


class Batcher:
    """A single thread owning all prediction compute."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="predict-batcher", daemon=True).start()

    def submit(self, model_name: str, fast: dict, x: torch.Tensor) -> Future:
        fut: Future = Future()
        self.q.put((model_name, fast, x, fut))
        return fut

    def _loop(self) -> None:
        while True:
            jobs = [self.q.get()]
            n = jobs[0][2].shape[0]
            while n < self.max_batch:
                try:
                    jobs.append(self.q.get_nowait())
                except queue.Empty:
                    break
                n += jobs[-1][2].shape[0]
            groups: dict[str, list] = {}
            for job in jobs:
                groups.setdefault(job[0], []).append(job)
            for name, group in groups.items():
                try:
                    self._run(name, group)
                except Exception as exc:  # never leave a request hanging
                    for *_, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)

    @torch.inference_mode()
    def _run(self, name: str, group: list) -> None:
        model, _ = registry.load(name)
        xs = [x for _, _, x, _ in group]
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        metrics.PREDICT_BATCH.observe(x.shape[0])
        passes = -(-x.shape[0] // self.max_batch)  # equal passes: 80 images as 40 + 40, not 64 + 16
        feats = model.embed(x) if passes == 1 else torch.cat([model.embed(c) for c in x.tensor_split(passes)])
        start = 0
        for _, fast, x, fut in group:
            f = feats[start:start + x.shape[0]].unsqueeze(0)
            start += x.shape[0]
            fut.set_result(model.fast_forward(fast, f)[0])


class Predictor:
    def __init__(self, settings: Settings, store: Store):
        self.store, self.lru = store, WeightsLRU(settings.lru_size)
        self.batcher = Batcher(settings.predict_max_batch)

    def weights(self, record: dict) -> dict[str, torch.Tensor]:
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

    def forget(self, aid: str) -> None:
        self.lru.drop(aid)

    def predict(self, record: dict, x: torch.Tensor, timeout: float = 30.0) -> torch.Tensor:
        return self.batcher.submit(record["model"], self.weights(record), x).result(timeout)
