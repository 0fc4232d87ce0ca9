"""Beyond one machine, with real processes: the store on a 6-node Redis Cluster (3 primaries,
a replica each), the broker behind Redis Sentinel, the failure drills of bench/drill.py in
short (a primary of each killed, a whole host killed behind HAProxy), and an API process
draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
import redis

from app.core import keys
from app.demo import sinusoid_task
from bench import drill
from bench.stack import KEYS, Stack, wait_until
from rapid_adapt_client import Client, RapidAdaptError

from .workers import slow_worker

pytestmark = pytest.mark.stack  # real processes, all of them


def sin_support(seed: int = 0):
    return sinusoid_task(seed)[0]


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("cluster"), sweep_seconds=1, tenant_max_adaptations=20, store_replicas=1)
    try:
        s.start_redis()  # the broker
        s.start_cluster()
        slow_worker(s, 0.3)
        s.start_api()
        s.wait_ready()
        yield s
    finally:
        s.stop()


def cluster_client(s: Stack) -> redis.RedisCluster:
    return redis.RedisCluster.from_url(s.env["RAPID_ADAPT_REDIS_URL"])


def test_the_main_flows_run_on_a_redis_cluster(cluster_stack):
    s = cluster_stack
    support, queries, _ = sinusoid_task(1)
    with Client(s.url, KEYS["acme"]) as c:
        a = c.create_adaptation("sinusoid-mlp", support, wait=30, metadata={"run": "cluster"})
        assert a["status"] == "succeeded"
        assert len(c.predict(a["id"], queries[:4])) == 4
        assert [e["type"] for e in c.events(a["id"])["data"]][-1] == "succeeded"
        queued = [c.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(3)]
        assert c.cancel(queued[-1])["status"] == "cancelled"  # still in line behind the others
        listed = [x["id"] for x in c.adaptations(limit=10)["data"]]
        assert listed[:4] == queued[::-1] + [a["id"]]
        assert [x["id"] for x in c.adaptations(metadata={"run": "cluster"})["data"]] == [a["id"]]
        c.delete(a["id"])
        with pytest.raises(RapidAdaptError) as e:
            c.adaptation(a["id"])
        assert e.value.status == 404
        wait_until(lambda: all(c.adaptation(i)["status"] == "succeeded" for i in queued[:2]), 30, "the jobs")
    r = cluster_client(s)
    assert not r.exists(keys.record("acme", a["id"]), keys.weights(a["id"]))
    assert r.keyslot(keys.tenant_index("acme")) != r.keyslot(keys.tenant_index("globex"))  # tenants spread


def test_quotas_and_expiry_hold_on_a_redis_cluster(cluster_stack):
    s = cluster_stack
    r = cluster_client(s)
    with Client(s.url, KEYS["globex"]) as c:
        made = [c.create_adaptation("sinusoid-mlp", sin_support(i), ttl_seconds=1)["id"] for i in range(3)]
        for i in range(17):
            c.create_adaptation("sinusoid-mlp", sin_support(i), ttl_seconds=600)
        with pytest.raises(RapidAdaptError) as e:
            c.create_adaptation("sinusoid-mlp", sin_support())
        assert e.value.status == 429 and e.value.code == "quota_exceeded"
        wait_until(lambda: not any(r.exists(keys.record("globex", i)) for i in made), 10, "the TTLs")
        wait_until(lambda: r.zcard(keys.tenant_index("globex")) == 17, 10, "the sweep")
        assert c.create_adaptation("sinusoid-mlp", sin_support())["status"] in ("queued", "running")


def test_drill_a_a_killed_store_primary_loses_no_adaptation_answered_succeeded(tmp_path):
    """With STORE_REPLICAS=1 the cluster promotes the replica, and every adaptation answered
    `succeeded` before the kill still answers and predicts after it."""
    got = drill.store_primary(seconds=9, tmp=tmp_path, beat=0.5)
    assert got["acked_succeeded_before_kill"] >= 3 and got["lost_after_kill"] == 0, got
    assert got["accepted_after_kill"] >= 1 and got["accepted_after_kill_succeeded"] == got["accepted_after_kill"], got


def test_drill_b_jobs_keep_flowing_across_a_sentinel_broker_failover(tmp_path):
    """Every job the API accepted while the broker's primary died and Sentinel promoted the
    replica ends succeeded."""
    got = drill.broker_primary(seconds=9, tmp=tmp_path, beat=0.5)
    assert got["accepted"] >= 10 and got["lost"] == 0 and got["answering_again_s"] is not None, got


def test_drill_c_a_killed_host_behind_haproxy_loses_no_job(tmp_path):
    """One of three hosts (API and worker on their own loopback address) killed at once: only
    requests in flight on it fail, no job is lost, and its job is done elsewhere within 30 s."""
    got = drill.host(seconds=9, tmp=tmp_path, beat=0.5)
    assert got["accepted"] >= 10 and got["lost"] == 0
    assert got["failed_after_kill"] == 0 and got["failed_in_flight_at_kill"] <= 3, got  # one per client at most
    assert got["recovery_s"] < 30


def test_a_draining_api_process_finishes_what_it_holds_and_refuses_the_rest_with_503(new_stack):
    """SIGTERM to an API process: requests in flight end normally, new ones get 503 `draining`
    (so does /readyz, which takes it out of a load balancer), and it exits after the drain."""
    s = new_stack(drain_seconds=3)
    s.start_redis()
    slow_worker(s, 1.5)
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"], timeout=30) as c, httpx.Client(base_url=s.url, timeout=10) as raw:
        held = {}
        t = threading.Thread(target=lambda: held.update(c.create_adaptation("sinusoid-mlp", sin_support(), wait=20)))
        t.start()
        time.sleep(0.5)  # the create is in flight, waiting for its job
        os.killpg(s.api.pid, signal.SIGTERM)
        time.sleep(0.3)
        refused = raw.get("/v1/models", headers={"Authorization": f"Bearer {KEYS['acme']}"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
        assert raw.get("/readyz").status_code == 503 and raw.get("/healthz").status_code == 200
        t.join(20)
        assert held["status"] == "succeeded"  # the request in flight was answered in full
        assert s.api.wait(15) in (0, -signal.SIGTERM)  # exited by itself (uvicorn re-raises the signal it handled)


def test_drill_d_a_rolling_update_behind_haproxy_answers_no_error_and_loses_no_job(tmp_path):
    """One host updated (SIGTERM, started again) under load: no answer is a 5xx but a draining
    process's 503, and every job accepted ends succeeded."""
    got = drill.rolling(seconds=6, tmp=tmp_path, beat=0.5, replace=1)
    assert got["accepted"] >= 10 and got["lost"] == 0, got
    assert got["5xx_other_than_draining"] == 0 and got["failed"] == sum(got["not_2xx"].values()), got
