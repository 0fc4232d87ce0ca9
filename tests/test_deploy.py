"""The Kubernetes manifests: each overlay renders with `kubectl kustomize`, every core object
validates against the Kubernetes schemas (kubernetes-validate --strict), every environment
variable they set is a setting the code reads, and KEDA scales on metrics the API exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from app.core.config import Settings
from bench.stack import METRICS_KEY, ROOT

from .conftest import metric_values

OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "kubernetes" / "overlays").iterdir())
CUSTOM = {"keda.sh/v1alpha1"}  # custom resources: no schema in Kubernetes itself
NOT_SETTINGS = {
    "WEB_CONCURRENCY": "app/serve.py",  # API processes
    "HOME": "a writable home under a read-only root filesystem",
}


@cache
def render(overlay: str) -> list[dict]:
    """The overlay's objects (rendered once per run: tests only read them)."""
    out = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_there_are_cpu_and_gpu_overlays():
    assert {"cpu", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_core_object_validates_strictly(overlay, tmp_path):
    docs = render(overlay)
    core = [d for d in docs if d["apiVersion"] not in CUSTOM]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    r = subprocess.run([str(cli), "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed for resource") == len(core), r.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_a_setting_the_code_reads(overlay):
    docs = render(overlay)
    names = set()
    for d in docs:
        if d["kind"] == "ConfigMap":
            names |= set(d["data"])
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            names |= {e["name"] for e in c.get("env", [])}
    fields = set(Settings.model_fields)
    for name in names:
        if name in NOT_SETTINGS:
            continue
        assert name.startswith("RAPID_ADAPT_") and name.removeprefix("RAPID_ADAPT_").lower() in fields, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_on_metrics_the_api_exports_and_the_gpu_pool_from_zero(overlay, api):
    docs = render(overlay)
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    workers = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "api"}
    assert set(scaled) == workers  # every worker pool has its ScaledObject
    text = api.request("GET", "/metrics", None, headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    exported = {name.split("{")[0] for name in metric_values(text)}
    for so in scaled.values():
        for trigger in so["spec"]["triggers"]:
            used = set(re.findall(r"rapid_adapt_\w+", trigger["metadata"]["query"]))
            assert used and used <= exported, used - exported
    if "worker-gpu" in scaled:
        assert scaled["worker-gpu"]["spec"]["minReplicaCount"] == 0
        gpu = next(d for d in docs if d["metadata"]["name"] == "worker-gpu" and d["kind"] == "Deployment")
        pod = gpu["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1 and pod["tolerations"]


def test_pods_run_as_non_root_on_a_read_only_root_and_only_the_service_reaches_redis():
    docs = render("gpu")
    for d in docs:
        pod = d.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, d["metadata"]["name"]
            assert "memory" in c["resources"]["limits"] and c["resources"]["requests"], d["metadata"]["name"]
            assert "--requirepass" not in " ".join(c.get("command", [])), d["metadata"]["name"]  # never in ps
            assert not any("PASSWORD" in e["name"] for e in c.get("env", [])), d["metadata"]["name"]  # nor in env
        secrets = [v["secret"] for v in pod.get("volumes", []) if "secret" in v]
        if d["metadata"]["name"].startswith("redis-"):  # each Redis mounts its own password, no other
            (secret,) = secrets
            assert [i["key"] for i in secret["items"]] == [d["metadata"]["name"].removeprefix("redis-")]
        else:
            assert [s["secretName"] for s in secrets] == ["rapid-adapt-redis"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].startswith("redis")]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(allowed) == ["api", "worker"]
    assert {d["kind"] for d in docs} >= {"PodDisruptionBudget", "HorizontalPodAutoscaler", "StatefulSet"}
