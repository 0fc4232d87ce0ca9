"""The README's quick start, as a new user runs it, and the client package installed alone
in a fresh virtual environment, its command line driving that quick start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.demo import omniglot_task
from bench.stack import ROOT, free_port

pytestmark = pytest.mark.stack  # the quick start's own processes, and a venv of the client

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("RAPID_ADAPT_")}


def quickstart(run_dir: Path, ports: dict, **extra) -> subprocess.CompletedProcess:
    env = CLEAN_ENV | {
        "RAPID_ADAPT_RUN_DIR": str(run_dir),
        "RAPID_ADAPT_PORT": str(ports["api"]),
        "RAPID_ADAPT_BROKER_PORT": str(ports["broker"]),
        "RAPID_ADAPT_STORE_PORT": str(ports["store"]),
    }
    return subprocess.run(
        ["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env | extra, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """`pip install ./clients/python` into a fresh virtual environment."""
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")],
        check=True,
        capture_output=True,
    )
    return venv


def test_the_client_installs_without_the_server_stack(client_venv):
    names = subprocess.run(
        [client_venv / "bin" / "python", "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    ).stdout
    installed = {p["name"].lower() for p in json.loads(names)}
    assert "rapid-adapt-client" in installed and "httpx" in installed
    assert not installed & {"torch", "celery", "fastapi", "redis", "numpy", "pillow"}


def test_quick_start_round_trip_cli_and_a_second_quick_start_refused(tmp_path, client_venv):
    ports = {"api": free_port(), "broker": free_port(), "store": free_port()}
    run_dir = tmp_path / "run"
    try:
        first = quickstart(run_dir, ports)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        assert "omniglot-conv4: query accuracy" in first.stdout and "sinusoid-mlp: adaptation" in first.stdout

        again = quickstart(run_dir, ports)  # the same checkout, still running
        assert again.returncode == 1 and "already running" in again.stderr
        other = quickstart(tmp_path / "run2", ports)  # another deployment on the same ports
        assert other.returncode == 1 and f"port {ports['api']}" in other.stderr and "already in use" in other.stderr

        # the command line from the fresh virtual environment: a folder of class folders of PNGs
        support, queries, truth = omniglot_task(seed=4, n_way=5, n_query=1)
        folder = tmp_path / "classes"
        for k, example in enumerate(support):
            (folder / f"char{k}").mkdir(parents=True)
            (folder / f"char{k}" / "a.png").write_bytes(_png(example["input"]))
        label_of = {e["label"]: f"char{k}" for k, e in enumerate(support)}
        files = []
        (tmp_path / "queries").mkdir()
        for i, q in enumerate(queries):
            files.append(tmp_path / "queries" / f"q{i}.png")
            files[-1].write_bytes(_png(q))
        cli = [str(client_venv / "bin" / "rapid-adapt"), "--json"]
        env = CLEAN_ENV | {"RAPID_ADAPT_URL": f"http://127.0.0.1:{ports['api']}", "RAPID_ADAPT_API_KEY": "demo-key"}
        adapted = subprocess.run(
            [*cli, "adapt", "--model", "omniglot-conv4", str(folder), "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert adapted.returncode == 0, adapted.stderr
        a = json.loads(adapted.stdout)
        assert a["status"] == "succeeded" and sorted(a["classes"]) == sorted(label_of.values())
        assert " step 1: loss " in adapted.stderr  # progress shown while it waited
        for given in ([*map(str, files)], [str(tmp_path / "queries")]):  # the files, or their folder
            predicted = subprocess.run(
                [*cli, "predict", a["id"], *given], env=env, capture_output=True, text=True, timeout=60
            )
            assert predicted.returncode == 0, predicted.stderr
            labels = [p["label"] for p in json.loads(predicted.stdout)]
            assert sum(got == label_of[t] for got, t in zip(labels, truth)) >= 3  # chance is 1 in 5
        nowhere = subprocess.run(
            [*cli, "adapt", "--model", "omniglot-conv4", str(tmp_path / "nope")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert nowhere.returncode == 2 and "nope: no such file or folder" in nowhere.stderr
        keyless = subprocess.run(
            [*cli, "models"], env=env | {"RAPID_ADAPT_API_KEY": "x" * 30}, capture_output=True, text=True
        )
        assert keyless.returncode == 1 and "RAPID_ADAPT_API_KEY or pass --key" in keyless.stderr
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        told = json.loads(status.stdout)
        assert told["status"] == "ready" and told["your key"] == "accepted" and told["workers alive"] >= 1
        refused = subprocess.run(
            [*cli, "status"], env=env | {"RAPID_ADAPT_API_KEY": "x" * 30}, capture_output=True, text=True
        )
        assert refused.returncode == 1 and "RAPID_ADAPT_API_KEY" in json.loads(refused.stdout)["your key"]
        missing = subprocess.run([*cli, "get", "ad_" + "0" * 32], env=env, capture_output=True, text=True)
        assert missing.returncode == 1 and "not_found" in missing.stderr
        down = subprocess.run(
            [*cli, "models"],
            env=env | {"RAPID_ADAPT_URL": "http://127.0.0.1:1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 4 and "nothing answered at http://127.0.0.1:1" in down.stderr
        # a stop and a start keep what was stored (Redis's append-only files in run/)
        stop = subprocess.run(
            ["bash", "scripts/stop.sh"], cwd=ROOT, env=CLEAN_ENV | {"RAPID_ADAPT_RUN_DIR": str(run_dir)}
        )
        assert stop.returncode == 0
        restarted = quickstart(run_dir, ports)
        assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-2000:]
        kept = subprocess.run([*cli, "get", a["id"]], env=env, capture_output=True, text=True, timeout=60)
        assert kept.returncode == 0 and json.loads(kept.stdout)["status"] == "succeeded", kept.stderr
    finally:
        subprocess.run(["bash", "scripts/stop.sh"], cwd=ROOT, env=CLEAN_ENV | {"RAPID_ADAPT_RUN_DIR": str(run_dir)})


def _png(image_input: dict) -> bytes:
    import base64

    return base64.b64decode(image_input["image"])
