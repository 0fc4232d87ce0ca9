"""Backbone bases (issue 33): a feature extractor exported with torch.export, served with the
project's adaptation on top. The project's own trunk exported adapts exactly as the native base;
published into a running stack, image and vector backbones are listed, adapt and predict over
HTTP; a broken program is refused with a log line and the other bases keep serving."""

from __future__ import annotations

import shutil

import httpx
import pytest
import torch

from app.demo import omniglot_task
from bench.stack import KEYS, wait_until
from models import checkpoint
from models.adapt import adapt, predict
from models.export import export_base, export_identity
from models.registry import Registry, shipped
from models.research import omniglot


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbones")
    export_base("omniglot-conv4", out)
    export_identity(16, out)
    return out


def test_the_exported_trunk_adapts_and_predicts_exactly_as_the_native_base(exported):
    native, _ = shipped().load("omniglot-conv4")
    backbone, spec = Registry([exported]).load("omniglot-conv4-backbone")
    assert spec["input"]["kind"] == "image" and spec["modes"]["fast"]["default_steps"] == native.default_steps
    ds = omniglot.load()
    sampler = omniglot.EpisodeSampler(ds, "test")
    for seed in range(3):
        sx, sy, qx, _ = sampler.sample(20, 1, 2, torch.Generator().manual_seed(seed))
        want = predict(native, adapt(native, sx, sy).fast, qx)
        got = predict(backbone, adapt(backbone, sx, sy).fast, qx)
        assert torch.allclose(got, want, atol=1e-4)
    tuned = adapt(backbone, sx, sy, mode="fine-tune")  # the head's steps also on augmented copies
    again = adapt(backbone, sx, sy, mode="fine-tune")
    fast = adapt(backbone, sx, sy, mode="fast")
    assert tuned.mode == "fine-tune" and fast.mode == "fast" and tuned.loss_curve.shape[1] == backbone.default_steps + 1
    assert all(torch.equal(tuned.fast[k], again.fast[k]) for k in tuned.fast)  # seeded: the same job, the same head
    assert not torch.allclose(tuned.fast["weight"], fast.fast["weight"])


def test_a_program_that_does_not_match_its_json_is_refused(exported, tmp_path):
    for name in ("omniglot-conv4-backbone", "vectors-16"):
        for suffix in (".json", ".safetensors", ".pt2"):
            shutil.copy(exported / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    (tmp_path / "vectors-16.pt2").write_bytes(b"not a program")  # unreadable
    swapped = (exported / "vectors-16.pt2").read_bytes()
    (tmp_path / "omniglot-conv4-backbone.pt2").write_bytes(swapped)  # runs, but not on 1x28x28 images
    r = Registry([tmp_path])
    for name in ("vectors-16", "omniglot-conv4-backbone"):
        with pytest.raises(KeyError):
            r.load(name)
    assert r.names() == ()
    with pytest.raises((ValueError, RuntimeError, AssertionError)):  # the program's own input guard, or ours
        checkpoint.load(tmp_path / "omniglot-conv4-backbone")


def test_backbones_published_into_a_running_stack_adapt_and_predict_over_http(exported, new_stack, tmp_path):
    published = tmp_path / "models"
    published.mkdir()
    s = new_stack(models_dir=f"shipped:{published}", models_poll_seconds=0.5)
    s.start()
    headers = {"Authorization": f"Bearer {KEYS['acme']}"}
    for name in ("omniglot-conv4-backbone", "vectors-16"):
        for suffix in (".pt2", ".safetensors", ".json"):  # the JSON last: the base is whole when it is seen
            shutil.copy(exported / f"{name}{suffix}", published / f"{name}{suffix}")
    (published / "broken.json").write_text((exported / "vectors-16.json").read_text())
    shutil.copy(exported / "vectors-16.safetensors", published / "broken.safetensors")
    (published / "broken.pt2").write_bytes(b"not a program")

    def listed() -> dict:
        return {m["name"]: m for m in httpx.get(f"{s.url}/v1/models", headers=headers).json()["data"]}

    models = wait_until(lambda: (m := listed()) and "vectors-16" in m and "omniglot-conv4-backbone" in m and m, 30, "")
    assert models["vectors-16"]["input"]["shape"] == [16] and models["vectors-16"]["version"]
    assert "broken" not in models and "omniglot-conv4" in models  # refused; the others serve
    assert "base refused" in s.logs() and "broken" in s.logs()

    support, queries, truth = omniglot_task(seed=3, n_way=5, n_query=2)
    answers = {}
    for model in ("omniglot-conv4", "omniglot-conv4-backbone"):
        body = {"model": model, "support": support, "mode": "fast"}
        made = httpx.post(f"{s.url}/v1/adaptations?wait=30", json=body, headers=headers, timeout=60).json()
        assert made["status"] == "succeeded", made
        path = f"{s.url}/v1/adaptations/{made['id']}/predictions"
        answers[model] = httpx.post(path, json={"inputs": queries}, headers=headers, timeout=60).json()["predictions"]
    assert [p["label"] for p in answers["omniglot-conv4-backbone"]] == [p["label"] for p in answers["omniglot-conv4"]]
    refused = httpx.get(f"{s.url}/v1/adaptations/{made['id']}/export", headers=headers)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_exportable"
    assert sum(p["label"] == t for p, t in zip(answers["omniglot-conv4"], truth)) >= 7  # of 10; chance is 2

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    vectors = [(c + 0.3 * torch.randn(16, generator=gen)).tolist() for c in centres for _ in range(3)]
    labels = [k for k in ("red", "green", "blue") for _ in range(3)]
    body = {"model": "vectors-16", "support": [{"input": v, "label": y} for v, y in zip(vectors, labels)]}
    made = httpx.post(f"{s.url}/v1/adaptations?wait=30", json=body, headers=headers, timeout=60).json()
    assert made["status"] == "succeeded", made
    near = [(c + 0.3 * torch.randn(16, generator=gen)).tolist() for c in centres]
    got = httpx.post(f"{s.url}/v1/adaptations/{made['id']}/predictions", json={"inputs": near}, headers=headers).json()[
        "predictions"
    ]
    assert [p["label"] for p in got] == ["red", "green", "blue"]
    wrong = httpx.post(
        f"{s.url}/v1/adaptations", json=body | {"support": [{"input": [1.0], "label": "a"}]}, headers=headers
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_shape"


def test_the_export_command_as_the_docs_give_it(tmp_path):
    import subprocess
    import sys

    from bench.stack import ROOT

    run = subprocess.run(
        [sys.executable, "-m", "models.export", "identity", "--dim", "8", "--out", str(tmp_path), "--name", "v8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "round trip checked" in run.stdout, run.stderr
    model, spec = Registry([tmp_path]).load("v8")
    assert spec["input"] | {"kind": "vector", "shape": [8]} == spec["input"] and model.dim == 8
    (tmp_path / "spec.json").write_text('{"kind": "vector", "shape": [6], "encodings": ["array"]}')
    run = subprocess.run(
        [sys.executable, "-m", "models.export", "module", "torch.nn:Tanh", "--input", str(tmp_path / "spec.json")]
        + ["--out", str(tmp_path), "--name", "tanh6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    model, _ = Registry([tmp_path]).load("tanh6")
    x = torch.randn(3, 6)
    assert torch.allclose(model.embed(x), torch.tanh(x))
