"""The predictor's merged forward passes: inputs of several adaptations embedded
together get the answers each would get alone."""

import time

import torch

from app.api.predictor import WeightsLRU, forward_merged
from models import registry
from models.adapt import adapt, predict
from models.research import omniglot


def test_merged_inputs_in_equal_passes_match_each_alone():
    model, _ = registry.load("omniglot-conv4")
    ds = omniglot.load()
    tasks = [adapt(model, ds.images[i * 20 : (i + 1) * 20], torch.arange(20)).fast for i in range(3)]
    queries = [ds.images[100:127], ds.images[300:301], ds.images[500:540]]  # 68 images: 2 passes of 34 at most 64
    outs = forward_merged(model, list(zip(tasks, queries)), max_batch=64)
    assert len(outs) == 3
    for fast, x, out in zip(tasks, queries, outs):
        assert out.shape == (x.shape[0], 20)
        torch.testing.assert_close(out, predict(model, fast, x), rtol=1e-4, atol=1e-4)


def test_the_weights_lru_holds_nothing_past_its_expiry_or_its_size(monkeypatch):
    lru, now = WeightsLRU(size=3), time.time()
    lru.put("old", "w-old", now + 0.2)
    for k in ("a", "b"):
        lru.put(k, f"w-{k}", now + 600)
    assert lru.get("old") == "w-old" and lru.get("a") == "w-a"
    time.sleep(0.25)
    assert lru.get("old") is None  # expired: never served
    monkeypatch.setattr(WeightsLRU, "SWEEP_SECONDS", 0.0)
    lru.put("c", "w-c", now + 600)
    assert set(lru.items) == {"a", "b", "c"}  # swept, not only hidden
    lru.put("d", "w-d", now + 600)
    assert list(lru.items) == ["a", "c", "d"]  # b was the least recently used
