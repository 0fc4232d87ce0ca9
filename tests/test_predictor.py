"""The predictor's merged forward passes: inputs of several adaptations embedded
together get the answers each would get alone."""

import torch

from app.api.predictor import FairQueue, Job, WeightsLRU, forward_merged
from models import registry
from models.adapt import adapt, predict
from models.research import omniglot


def test_merged_inputs_in_equal_passes_match_each_alone():
    model, _ = registry.shipped().load("omniglot-conv4")
    ds = omniglot.load()
    tasks = [adapt(model, ds.images[i * 20 : (i + 1) * 20], torch.arange(20)).fast for i in range(3)]
    queries = [ds.images[100:127], ds.images[300:301], ds.images[500:540]]  # 68 images: 2 passes of 34 at most 64
    outs = forward_merged(model, list(zip(tasks, queries)), max_batch=64)
    assert len(outs) == 3
    for fast, x, out in zip(tasks, queries, outs):
        assert out.shape == (x.shape[0], 20)
        torch.testing.assert_close(out, predict(model, fast, x), rtol=1e-4, atol=1e-4)


def test_the_weights_lru_holds_nothing_past_its_expiry_or_its_size():
    clock = [1000.0]
    lru = WeightsLRU(size=3, timer=lambda: clock[0])
    lru.put("old", "w-old", 1000.5)
    for k in ("a", "b"):
        lru.put(k, f"w-{k}", 1600)
    assert lru.get("old") == "w-old" and lru.get("a") == "w-a"
    clock[0] = 1001.0
    assert lru.get("old") is None  # expired: never served
    lru.put("c", "w-c", 1600)
    assert set(lru.items) == {"a", "b", "c"}  # dropped, not only hidden
    lru.put("d", "w-d", 1600)
    assert set(lru.items) == {"a", "c", "d"}  # b was the least recently used


def test_the_fair_queue_lets_a_newcomer_in_before_a_backlog_and_fills_passes_with_whole_jobs():
    q = FairQueue()
    job = lambda tenant, n: Job(f"ad_{tenant}", tenant, [0] * n, lambda _: None)  # noqa: E731
    flood = job("acme", 500)
    q.put(flood)
    assert q.take(block=False) is flood
    flood.done = 64
    q.put(flood, rest=True)  # the backlog's rest, taken again next
    small = job("globex", 20)
    q.put(small)  # a tenant with nothing waiting comes in at the front
    assert q.take(block=False) is small
    assert q.take(block=False, room=44) is None  # the backlog's rest (436) never fills up another's pass
    assert q.take(block=False, room=None) is flood
    q.put(job("acme", 10))
    q.put(job("globex", 30))
    assert [q.take(block=False, room=40).tenant for _ in range(2)] == ["globex", "acme"]  # newest newcomer first
    assert q.take(block=False) is None
