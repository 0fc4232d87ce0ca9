"""The prediction batcher: requests merged into shared forward passes get the
answers each would get alone."""

import torch

from app.predictor import Batcher
from models import omniglot, registry
from models.adapt import adapt, predict


def test_merged_requests_in_equal_passes_match_each_alone():
    model, _ = registry.load("omniglot-conv4")
    ds = omniglot.load()
    tasks = [adapt(model, ds.images[i * 20:(i + 1) * 20], torch.arange(20)).fast for i in range(3)]
    queries = [ds.images[100:127], ds.images[300:301], ds.images[500:540]]  # 68 images: 2 passes of 34 at most 64
    batcher = Batcher(max_batch=64)
    busy = batcher.submit("omniglot-conv4", tasks[0], ds.images[:64].repeat(4, 1, 1, 1))  # the others queue meanwhile
    futures = [batcher.submit("omniglot-conv4", fast, x) for fast, x in zip(tasks, queries)]
    for fast, x, fut in zip(tasks, queries, futures):
        out = fut.result(30)
        assert out.shape == (x.shape[0], 20)
        torch.testing.assert_close(out, predict(model, fast, x), rtol=1e-4, atol=1e-4)
    assert busy.result(30).shape == (256, 20)
