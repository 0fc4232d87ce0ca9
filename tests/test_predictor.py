"""The predictor's merged forward passes: inputs of several adaptations embedded
together get the answers each would get alone."""

import torch

from app.api.predictor import forward_merged
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
