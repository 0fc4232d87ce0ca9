"""The naive way of doing Rapid Adapt's job, the baseline of every benchmark figure:
deep-copy the whole model, a new Adam, a Python loop of backward() and step(),
pickle the adapted model into Redis; per prediction, unpickle it and run it.
(Benchmark-only: it unpickles bytes that this same process just wrote.)"""

from __future__ import annotations

import pickle

import torch

from models.nets import Base
from models.research.baselines import Classifier, classic_finetune


def classifier_for(base: Base, n_way: int) -> torch.nn.Module:
    return Classifier(base, n_way) if base.task == "classification" else base.net


def adapt(base: Base, x, y, steps: int, lr: float = 1e-3) -> torch.nn.Module:
    n_way = int(y.max()) + 1 if base.task == "classification" else 0
    return classic_finetune(classifier_for(base, n_way), x, y, steps, lr, base.task)


def store(redis_client, key: str, model: torch.nn.Module) -> int:
    data = pickle.dumps(model)
    redis_client.set(key, data)
    return len(data)


@torch.inference_mode()
def predict(redis_client, key: str, x: torch.Tensor) -> torch.Tensor:
    model = pickle.loads(redis_client.get(key))  # noqa: S301 - the baseline's own bytes
    return model(x)
