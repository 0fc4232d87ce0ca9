"""Predictions in the API process.

Two threads per process do the work of prediction requests, each in its own lane: it
reads the adaptation's record (and counts the tenant's images against its rate), decodes
the inputs, finds the adapted weights, runs the forward pass and hands back plain lists,
so a request costs the event loop one hand-off and one callback (a thread-pool handler
waiting on a separate batcher thread costs four hand-offs; docs/experiments.md). A
request that fits in one pass goes to the interactive lane; a larger one (more images
than one pass, or megabytes of them) to the bulk lane, whose thread runs at background
CPU priority (app/core/priority.py): a flood of large requests takes the cores only while
no one's small request needs them.

Each lane serves tenants in turn (`FairQueue`): a pass opens with the next tenant's
request, a large one a slice of `predict_max_batch` images at a time, and is filled up
with other waiting requests that fit in it whole, so one tenant's requests delay
another's in the same lane by about the pass under way (bench/results/flood.md). The
images of a pass are embedded together (also across adaptations of one base), then each
adaptation's own part runs. Adapted weights come from a bounded in-process LRU, then
the weights cache in Redis; weights evicted from Redis are rebuilt from the stored
support set with the worker's `run_adaptation`, on a rebuild thread of its own at
background priority, so a rebuild holds back only the requests that need it.

The lanes and the rebuild thread start with the app (`start`, from its lifespan) and
stop with it (`stop`): a request still waiting then is answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from cachetools import TLRUCache

from models.exported import outputs
from models.registry import Registry

from ..core import idle, priority, tracing
from ..core.adaptation import run_adaptation
from ..core.config import Settings
from ..core.store import Store
from . import metrics
from .bases import base_of
from .errors import ApiError, over_rate
from .inputs import Limits, batch
from .records import owned

log = logging.getLogger("rapid_adapt.api")
LARGE_BYTES = 2**20  # a request with more image data than this goes to the bulk lane


def shutting_down() -> ApiError:
    return ApiError(503, "unavailable", "the service is shutting down; retry", [])


class WeightsLRU:
    """Adapted weights by id, least recently used out first, and none past its adaptation's
    expiry: memory follows the live adaptations, up to `size` (cachetools' TLRUCache, locked:
    the lanes and the rebuild thread share it)."""

    def __init__(self, size: int, timer=time.time):
        self.items = TLRUCache(size, ttu=lambda _key, held, _now: held[1], timer=timer)
        self.lock = threading.Lock()

    def get(self, key: str):
        with self.lock:
            held = self.items.get(key)
            return None if held is None else held[0]

    def put(self, key: str, value, expires: float) -> None:
        with self.lock:
            self.items[key] = (value, expires)

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
    reply: Callable[[Outcome | BaseException], None]  # called once, from its lane's thread
    record: dict | None = None
    x: torch.Tensor | None = None
    fast: dict | None = None
    done: int = 0  # images taken into a pass
    outs: list = field(default_factory=list)  # their outputs, slice by slice
    failed: bool = False
    span: Any = None  # the request's span context, which a pass serving it links to (tracing)

    @property
    def left(self) -> int:
        """Images not yet taken into a pass."""
        return len(self.inputs) - self.done


class FairQueue:
    """Waiting jobs by tenant, taken round robin: the tenant served goes to the back, and a
    tenant with nothing waiting comes in at the front (as new flows do in FQ-CoDel), so a
    tenant's occasional request waits for at most the pass under way, not a backlog's next."""

    def __init__(self, lane: str = "interactive"):
        self.ready = threading.Condition()
        self.by_tenant: OrderedDict[str, deque[Job]] = OrderedDict()
        self.closed = False
        self.waiting = metrics.LANE_WAITING.labels(lane)  # jobs in it, on /metrics
        self.waiting.set(0)

    def close(self) -> list[Job]:
        """Wake the lane to stop. -> the jobs still waiting, to be answered."""
        with self.ready:
            self.closed = True
            left = [job for jobs in self.by_tenant.values() for job in jobs]
            self.by_tenant.clear()
            self.waiting.set(0)
            self.ready.notify_all()
            return left

    def put(self, job: Job, rest: bool = False) -> None:
        """rest: the job's images left after a pass, first in its tenant's line."""
        with self.ready:
            if job.tenant not in self.by_tenant:
                self.by_tenant[job.tenant] = deque()
                if not rest:
                    self.by_tenant.move_to_end(job.tenant, last=False)
            jobs = self.by_tenant[job.tenant]
            jobs.appendleft(job) if rest else jobs.append(job)
            self.waiting.inc()
            self.ready.notify()

    def take(self, block: bool, room: int | None = None) -> Job | None:
        """The next tenant's first job; with room, the next whose images left fit in it."""
        with self.ready:
            while block and not self.by_tenant and not self.closed:
                self.ready.wait()
            waiting = self.by_tenant.items()
            tenant, jobs = next(((t, js) for t, js in waiting if room is None or js[0].left <= room), (None, None))
            if jobs is None:
                return None
            job = jobs.popleft()
            self.waiting.dec()
            del self.by_tenant[tenant]
            if jobs:
                self.by_tenant[tenant] = jobs  # to the back of the rotation
            return job


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


class Predictor:
    def __init__(self, settings: Settings, store: Store, registry: Registry):
        self.settings, self.store, self.registry = settings, store, registry
        self.lru, self.limits = WeightsLRU(settings.lru_size), Limits.of(settings)
        self.interactive = self.bulk = None  # the lanes' queues, while started
        self.threads: list[threading.Thread] = []
        self.rebuilder: ThreadPoolExecutor | None = None
        self.rebuilding: dict[str, Future] = {}  # id -> its weights being rebuilt
        self.rebuilding_lock = threading.Lock()
        self.narrow = settings.torch_threads or torch.get_num_threads()  # every thread's, but a wide pass's

    def start(self) -> None:
        self.interactive, self.bulk = FairQueue("interactive"), FairQueue("bulk")
        nice = self.settings.background_nice
        self.rebuilder = ThreadPoolExecutor(1, "predictor-rebuild", initializer=self._background, initargs=(nice,))
        self.interactive_threads = idle.PassThreads(self.narrow, self.settings.predict_idle_threads)
        lanes = (
            ("predictor", self.interactive, 0, self.interactive_threads),
            ("predictor-bulk", self.bulk, nice, idle.PassThreads(self.narrow, 1)),
        )
        self.threads = [
            threading.Thread(target=self._loop, args=(q, n, t), name=name, daemon=True) for name, q, n, t in lanes
        ]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stop the lanes after the pass under way; requests still waiting are answered 503."""
        for q in (self.interactive, self.bulk):
            for job in q.close():
                job.reply(shutting_down())
        for t in self.threads:
            t.join()
        self.rebuilder.shutdown(wait=True, cancel_futures=True)
        self.threads, self.rebuilder, self.rebuilding = [], None, {}

    async def predict(self, aid: str, tenant: str, inputs: list | torch.Tensor, timeout: float = 30.0) -> Outcome:
        """From the event loop: raises what the thread raised (404, 422, 429, ...), TimeoutError
        past `timeout`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        job = Job(aid, tenant, inputs, lambda result: _reply(loop, fut, result), span=tracing.current())
        (self.bulk if self.large(inputs) else self.interactive).put(job)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            raise TimeoutError("prediction timed out") from None

    def large(self, inputs) -> bool:
        """More than one pass of work: more images than a pass, or megabytes of them to decode."""
        if len(inputs) > self.settings.predict_max_batch:
            return True
        return not isinstance(inputs, torch.Tensor) and sum(len(getattr(v, "image", "")) for v in inputs) > LARGE_BYTES

    def forget(self, aid: str) -> None:
        self.lru.drop(aid)

    def cached(self, record: dict) -> dict[str, torch.Tensor] | None:
        """An adaptation's tensors as stored (`Base.to_stored`: the compact form is what the LRU
        holds), from the LRU or the weights cache in Redis; None when Redis evicted them."""
        aid = record["id"]
        fast = self.lru.get(aid)
        if fast is not None:
            metrics.CACHE.labels("lru_hit").inc()
            return fast
        fast = self.store.weights(aid)
        if fast is not None:
            metrics.CACHE.labels("redis_hit").inc()
            self.keep(record, fast)
        return fast

    def keep(self, record: dict, fast: dict[str, torch.Tensor]) -> None:
        """In the LRU until the adaptation expires."""
        self.lru.put(record["id"], fast, record["created_ts"] + record["ttl_seconds"])

    def rebuild(self, record: dict) -> Future:
        """Weights evicted from Redis, adapted again from the stored support set on the rebuild
        thread (one rebuild per adaptation however many requests wait for it)."""
        aid = record["id"]
        with self.rebuilding_lock:
            if aid not in self.rebuilding:
                metrics.CACHE.labels("miss_readapt").inc()
                self.rebuilding[aid] = self.rebuilder.submit(self._rebuild, record)
            return self.rebuilding[aid]

    def _background(self, nice: int) -> None:
        priority.lower_this_thread(nice)
        idle.pin(self.narrow)

    def _rebuild(self, record: dict) -> dict[str, torch.Tensor]:
        aid = record["id"]
        try:
            support = self.store.support(record["tenant"], aid)
            if support is None:
                raise ApiError(404, "not_found", "adaptation not found")
            fast, _ = run_adaptation(self.registry, record, support)
            self.store.put_weights(record, fast)
            self.keep(record, fast)
            return fast
        finally:
            with self.rebuilding_lock:
                self.rebuilding.pop(aid, None)

    # ---- the lanes' threads --------------------------------------------------
    def _loop(self, q: FairQueue, nice: int, threads: idle.PassThreads) -> None:
        priority.lower_this_thread(nice)
        threads.start()
        while not q.closed:
            groups: dict[str, list[tuple[Job, torch.Tensor]]] = {}
            for job, x in self._take(q):  # one pass per base version
                groups.setdefault((job.record["model"], job.record.get("model_version")), []).append((job, x))
            for group in groups.values():
                try:
                    model = base_of(self.registry, group[0][0].record)[0]
                    images, base = sum(len(x) for _, x in group), group[0][0].record["model"]
                    spans = [j.span for j, _ in group]
                    with threads.one_pass() as n, tracing.shared("prediction pass", spans, images=images, model=base):
                        metrics.PREDICT_PASSES.labels(n).inc()
                        outs = forward_merged(model, [(j.fast, x) for j, x in group], self.settings.predict_max_batch)
                except Exception as exc:  # never leave a request hanging
                    log.exception("prediction failed")
                    for job, _ in group:
                        if not job.failed:
                            job.failed = True  # answered now; a slice of it still waiting is dropped
                            job.reply(exc)
                    continue
                for (job, _), out in zip(group, outs):
                    job.outs.append(out)
                    if sum(len(o) for o in job.outs) == len(job.x):
                        job.reply(Outcome(job.record, job.x, outputs(job.record, torch.cat(job.outs))))

    def _take(self, q: FairQueue) -> list[tuple[Job, torch.Tensor]]:
        """Wait for a job and take a slice of it, then fill the pass with waiting jobs that fit
        whole, round robin by tenant (a backlog's slices never lengthen another tenant's pass).
        Jobs that fail or whose adaptation has not succeeded are answered at once; a job with
        images left goes back to the front of its tenant's line."""
        taken, room = [], self.settings.predict_max_batch
        while room > 0:
            job = q.take(not taken, None if not taken else room)  # after the first, whole jobs only
            if job is None:
                break
            if job.failed or job.fast is None and not self._prepare(job, q):
                continue
            part = job.x[job.done : job.done + room]
            job.done += len(part)
            room -= len(part)
            taken.append((job, part))
            if job.done < len(job.x):
                q.put(job, rest=True)
        return taken

    def _prepare(self, job: Job, q: FairQueue) -> bool:
        """Read the record, count the images against the tenant's rate, decode the inputs and
        find the weights. -> whether the job is ready for a pass (else it has been answered, or
        waits for its weights to be rebuilt and comes back to `q` then)."""
        try:
            n = len(job.inputs)
            job.record, count = self.store.get_counted(job.tenant, job.aid, n)
            if job.record is None or job.record["tenant"] != job.tenant:
                job.record = owned(self.store, job.aid, job.tenant)  # raises the 404
            limit = self.settings.tenant_predict_images_per_second
            if count > limit:
                raise over_rate(limit)
            job.x = (
                job.inputs
                if isinstance(job.inputs, torch.Tensor)
                else batch(
                    job.inputs,
                    base_of(self.registry, job.record)[1],
                    self.limits,
                    [["inputs", i] for i in range(n)],
                )
            )
            if job.record["status"] != "succeeded":
                job.reply(Outcome(job.record, job.x, None))
                return False
            job.fast = self.cached(job.record)
            if job.fast is None:
                self.rebuild(job.record).add_done_callback(lambda done: self._rebuilt(job, q, done))
            return job.fast is not None
        except Exception as exc:
            job.reply(exc)
            return False

    def _rebuilt(self, job: Job, q: FairQueue, done: Future) -> None:
        """The job's weights are back: into its lane again, first in its tenant's line."""
        if done.cancelled() or q.closed:
            job.reply(shutting_down())
        elif done.exception() is not None:
            job.reply(done.exception())
        else:
            job.fast = done.result()
            q.put(job, rest=True)


def _reply(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result) -> None:
    """From a lane's thread: settle the request's future on its event loop."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: the process is shutting down
        loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future, result) -> None:
    if fut.done():  # the request was cancelled (client gone) or timed out
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
