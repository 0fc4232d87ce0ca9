"""deploy/monitoring/ is real: the rules load and every alert passes its unit tests in promtool,
the Compose config checks, and a real Prometheus scraping a real stack (two API processes, two
workers) reads back the jobs each tenant ran, evaluates the rules, and answers every dashboard
query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import yaml

from app.demo import sinusoid_task
from bench.stack import KEYS, METRICS_KEY, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_the_rules_load_and_every_alert_has_a_unit_test_and_a_runbook_entry():
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    cases = yaml.safe_load((MONITORING / "rules.test.yml").read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    names = {a["alert"] for a in alerts()}
    assert names == firing  # each alert is shown to fire
    headings = {
        re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", (ROOT / "docs" / "operations.md").read_text(), re.M)
    }
    for a in alerts():
        anchor = a["annotations"]["runbook"].split("#")[1]
        assert a["annotations"]["runbook"].startswith("docs/operations.md#") and anchor in headings, a["alert"]


def test_the_compose_prometheus_config_checks(tmp_path):
    for name in ("prometheus.yml", "rules.yml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    (tmp_path / "key").write_text(METRICS_KEY)
    config = tmp_path / "prometheus.yml"
    config.write_text(config.read_text().replace("/run/secrets/metrics_key", str(tmp_path / "key")))
    checked = promtool("check", "config", str(config), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def api_children(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_a_real_prometheus_reads_back_each_tenants_jobs_across_two_api_processes_and_two_workers(new_stack, tmp_path):
    s = new_stack()
    s.env["WEB_CONCURRENCY"] = "2"
    s.start_redis()
    s.start_worker()
    s.start_worker()
    s.start_api()
    s.wait_ready()
    parent = next(p for p in s.procs if "app.serve" in " ".join(map(str, p.args)))
    wait_until(lambda: len(api_children(parent.pid)) == 2, 30, "two API processes")
    wait_until(lambda: httpx.get(s.url + "/readyz").json()["workers"] == 2, 30, "two workers")

    made = {"acme": 5, "globex": 3}
    support = sinusoid_task(2)[0]

    def create(tenant: str) -> None:  # a connection each: the kernel spreads them over the two processes
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=30) as c:
            r = c.post("/v1/adaptations?wait=20", json={"model": "sinusoid-mlp", "support": support})
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text

    threads = [threading.Thread(target=create, args=(t,)) for t, n in made.items() for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(MONITORING / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "rapid-adapt-api",
                        "authorization": {"credentials": METRICS_KEY},
                        "static_configs": [{"targets": [f"127.0.0.1:{s.api_port}"]}],
                    }
                ],
            }
        )
    )
    s._spawn(
        [
            shutil.which("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        "prometheus",
    )
    prom = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict]:
        answer = httpx.get(f"{prom}/query", params={"query": expr}, timeout=5).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def per_tenant() -> dict[str, float]:
        rows = query('max by (tenant) (rapid_adapt_jobs_finished_total{status="succeeded"})')
        return {r["metric"]["tenant"]: float(r["value"][1]) for r in rows}

    wait_until(lambda: per_tenant() == made, 60, f"Prometheus reading {made}")
    wait_until(lambda: query("rapid_adapt:workers_alive:max"), 30, "the recording rules")
    assert float(query("rapid_adapt:workers_alive:max")[0]["value"][1]) == 2
    assert float(query('rapid_adapt_job_end_to_end_seconds_count{job="rapid-adapt-api"}')[0]["value"][1]) == 8

    def rules() -> list[dict]:
        return [r for g in httpx.get(f"{prom}/rules", timeout=5).json()["data"]["groups"] for r in g["rules"]]

    assert len(rules()) == 15
    wait_until(lambda: all(r["health"] == "ok" for r in rules()), 10, "every rule evaluated without error")
    quiet = lambda: all(r["state"] == "inactive" for r in rules() if r["type"] == "alerting")  # noqa: E731
    wait_until(quiet, 10, "no alert on a healthy stack")  # ApiDown is pending until the first scrape's evaluation
    dashboard = json.loads((MONITORING / "grafana" / "rapid-adapt-fleet.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query(target["expr"])  # every panel's query is valid PromQL over these metrics
