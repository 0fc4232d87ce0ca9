"""Throughput without unfairness (issue 31): jobs adapted together give each job its own
weights; a long job yields between its slices to another tenant's short one; a lone tenant
runs on every worker (tests/test_hardening.py has the reservation that operators may set)."""

from __future__ import annotations

import pytest
import torch

from app.core.adaptation import resolved_mode, run_adaptation, run_adaptations
from app.demo import sinusoid_task
from bench.flood import bodies
from bench.stack import KEYS, wait_until
from models import registry
from models.adapt import CHUNK, adapt, chunked
from models.research import omniglot
from rapid_adapt_client import Client

from .workers import slow_worker


def omniglot_jobs(n: int, n_way: int = 5, shots: int = 1, mode: str = "fast"):
    reg = registry.shipped()
    version = reg.load("omniglot-conv4")[1]["version"]
    sampler = omniglot.EpisodeSampler(omniglot.load(), "test")
    gen, records, supports = torch.Generator().manual_seed(0), [], []
    for _ in range(n):
        sx, sy, _, _ = sampler.sample(n_way, shots, 1, gen)
        classes = [f"c{k}" for k in range(n_way)]
        records.append({"model": "omniglot-conv4", "model_version": version, "mode": mode, "classes": classes})
        supports.append({"x": sx, "y": sy})
    return reg, records, supports


@pytest.mark.parametrize("mode", ["fast", "auto"])
def test_jobs_adapted_together_get_exactly_their_own_weights(mode):
    """One `adapt` over six stacked support sets: each job's stored tensors and metrics equal
    those of its own run, bit for bit (the embedding is per image, the fast loop per task). `auto`
    jobs are resolved first, as the worker does, and their trunk passes from the choice are reused
    (`resolved_mode`): the same tensors as a fast job adapted from scratch."""
    reg, records, supports = omniglot_jobs(6, mode=mode)
    if mode == "auto":
        assert {resolved_mode(reg, r, s, torch.device("cpu")) for r, s in zip(records, supports)} == {"fast"}
        assert all(s["trunk"].shape[0] == len(s["x"]) for s in supports)
    together = run_adaptations(reg, records, supports)
    for record, support, (weights, metrics) in zip(records, supports, together):
        plain = {"x": support["x"], "y": support["y"]}
        alone, alone_metrics = run_adaptation(reg, record | {"mode": "fast"}, plain)
        assert weights.keys() == alone.keys()
        assert all(torch.equal(weights[k], alone[k]) for k in weights)
        assert metrics["loss_curve"] == alone_metrics["loss_curve"] and metrics["batched"] == 6


def test_a_large_support_set_is_embedded_in_slices_with_the_same_values():
    """A 300-image support set: embedded in chunks of CHUNK images with a pause between them,
    each step followed by one too; the chunks give the embedding of one pass."""
    reg, records, supports = omniglot_jobs(1, n_way=20, shots=15)
    model, _ = reg.load("omniglot-conv4")
    x, y = supports[0]["x"], supports[0]["y"]
    pauses = []
    with torch.no_grad():
        whole, sliced = model.embed_support(x), chunked(model.embed_support, x, lambda: pauses.append(1))
    assert len(pauses) == (len(x) - 1) // CHUNK and torch.allclose(whole, sliced, atol=1e-5)
    count = []
    adapted = adapt(model, x, y, pause=lambda: count.append(1))
    assert len(count) == (len(x) - 1) // CHUNK + adapted.steps


def sin_support(seed: int):
    return sinusoid_task(seed)[0]


def test_waiting_fast_jobs_adapt_as_one_batch_and_predict_as_if_alone(new_stack):
    """Twelve fast jobs of two tenants wait behind a slow job: the worker adapts their backlogs as
    batches (their metrics say so; each tenant's last job runs alone) and each predicts exactly as
    the same support set adapted alone."""
    s = new_stack(job_slice_seconds=0)  # the slow job does not yield to them one by one
    s.start_redis()
    slow_worker(s, 1.0)  # each job, or batch, first sleeps (tests/faults.py)
    s.start_api()
    s.wait_ready()
    xs = [[x / 4] for x in range(-16, 17)]
    with Client(s.url, KEYS["acme"]) as acme, Client(s.url, KEYS["globex"]) as globex:
        blocker = acme.create_adaptation("sinusoid-mlp", sin_support(99), mode="fine-tune")  # never batched
        wait_until(lambda: acme.adaptation(blocker["id"])["status"] == "running", 30, "the slow job to run")
        ids = [(c, c.create_adaptation("sinusoid-mlp", sin_support(i))["id"]) for i in range(6) for c in (acme, globex)]
        done = [c.wait(aid, timeout=60) for c, aid in ids]
        assert {d["status"] for d in done} == {"succeeded"}, s.logs()
        batched = [d["metrics"]["batched"] or 1 for d in done]
        assert max(batched) > 1 and sum(b > 1 for b in batched) >= 6, batched
        for i in range(3):  # the same support sets, now alone (nothing else waits)
            c, aid = ids[2 * i]
            alone = c.create_adaptation("sinusoid-mlp", sin_support(i), wait=30)
            assert alone["metrics"]["batched"] is None
            assert c.predict(alone["id"], xs) == c.predict(aid, xs)


@pytest.mark.parametrize("slice_seconds", [0.02, 0.0])
def test_a_short_job_runs_between_the_slices_of_a_long_one(new_stack, slice_seconds):
    """One worker busy with acme's 500-drawing fine-tune job: globex's job runs at the long
    job's next pause and ends first, and the long job's metrics count the job it yielded to.
    With slicing off (0), globex's job waits for the long one."""
    s = new_stack(job_slice_seconds=slice_seconds).start()
    _, _, big_job, _ = bodies()
    with Client(s.url, KEYS["acme"]) as acme, Client(s.url, KEYS["globex"]) as globex:
        long = acme.create_adaptation("omniglot-conv4", big_job["support"], mode="fine-tune")
        wait_until(lambda: acme.adaptation(long["id"])["status"] == "running", 60, "the long job to run")
        short = globex.wait(globex.create_adaptation("sinusoid-mlp", sin_support(1))["id"], timeout=60)
        long = acme.wait(long["id"], timeout=120)
        assert short["status"] == long["status"] == "succeeded", s.logs()
        if slice_seconds:
            assert short["finished_at"] < long["finished_at"]
            assert long["metrics"]["yielded"]["jobs"] == 1 and long["metrics"]["yielded"]["ms"] > 0
        else:
            assert short["started_at"] > long["finished_at"] and long["metrics"]["yielded"] is None
