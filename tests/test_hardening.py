"""Defences, each in the form of the defect it fixes: lost and stuck jobs, one tenant
starving the others, quotas, image memory amplification, malformed HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
from PIL import Image

from app.core import keys
from app.demo import sinusoid_task
from bench.stack import KEYS, ROOT, wait_until
from rapid_adapt_client import Client, RapidAdaptError

from .workers import slow_worker


def sin_support(seed: int = 0):
    return sinusoid_task(seed)[0]


def wait_all(c: Client, ids: list[str], timeout: float) -> dict[str, str]:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = {aid: c.adaptation(aid)["status"] for aid in ids}
        if all(v in ("succeeded", "failed", "cancelled") for v in status.values()):
            break
        time.sleep(0.2)
    return status


@pytest.mark.parametrize("twins", [False, True], ids=["own-node-names", "one-node-name"])
def test_a_killed_workers_job_is_put_back_and_done_by_another_with_default_settings(new_stack, twins):
    """No shortened timeouts: the default heartbeat (2 s) and Celery's 300 s visibility
    timeout. The killed worker's job is put back by the other worker's reaper (how soon is
    bench.drill's to measure). Twins share one Celery node name, as workers started without `-n`
    on one host do, and containers on a host network (all have the host's name): each still holds
    jobs and beats under a name of its own start, so the survivor's heartbeat does not keep the
    victim's jobs held."""
    s = new_stack(worker_heartbeat_seconds=2.0)
    s.start_redis()
    node = {"name": f"twin-{s.redis_port}@%h"} if twins else {}
    s.env["_RAPID_ADAPT_WORKER_INSTANCE"] = "victim"  # the name of its start (worker/celery_app.py)
    victim = slow_worker(s, 1.0, **node)
    s.env["_RAPID_ADAPT_WORKER_INSTANCE"] = "survivor"
    slow_worker(s, 1.0, **node)
    del s.env["_RAPID_ADAPT_WORKER_INSTANCE"]
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"]) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(20)]
        r = redis.Redis(port=s.redis_port, db=1)
        held = lambda: [a.decode() for a, v in r.hgetall(keys.flights("acme")).items() if "#victim" in v.decode()]
        started = lambda: [a for a in held() if c.adaptation(a)["status"] == "running"]  # claimed, and started
        wait_until(started, 30, "a job running on the victim")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child, mid-job (in its 1 s sleep)
        orphans = held()  # its job, or the jobs of its batch
        status = wait_all(c, ids, 90)
        assert list(status.values()) == ["succeeded"] * 20, s.logs()  # 0 of 20 lost
        for orphan in orphans:
            kinds = [e["type"] for e in c.iter_events(orphan)]
            assert "requeued" in kinds and kinds[-1] == "succeeded" and kinds.count("succeeded") == 1
            # the killed try (when it had started), then the other worker's
            assert c.adaptation(orphan)["attempts"] == kinds.count("started") and kinds.count("started") <= 2
        assert any(c.adaptation(o)["attempts"] == 2 for o in orphans)
        assert not r.hgetall(keys.flights("acme"))


def test_redis_restarted_under_load_leaves_no_job_running(new_stack):
    s = new_stack(worker_heartbeat_seconds=2.0)
    s.start_redis(persist=True)
    slow_worker(s, 0.3)
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"], timeout=10) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(12)]
        time.sleep(1.0)  # some done, one running, the rest queued
        s.stop_redis()
        time.sleep(2.0)
        s.start_redis(persist=True)
        status = wait_all(c, ids, 90)
    assert list(status.values()) == ["succeeded"] * 12, (status, s.logs())
    assert s.workers[0].poll() is None  # the worker never exited


def test_one_tenants_backlog_delays_another_by_about_one_job(new_stack):
    """Fair scheduling: acme queues 16 slow jobs, then globex one; globex's waits for the job
    in hand, not for acme's backlog."""
    s = new_stack()
    s.start_redis()
    slow_worker(s, 0.5)
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"]) as acme, Client(s.url, KEYS["globex"]) as globex:
        flood = [acme.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(16)]
        mine = globex.create_adaptation("sinusoid-mlp", sin_support(99))
        done = globex.wait(mine["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert acme.adaptation(flood[-1])["status"] in ("queued", "running")  # the backlog is still there
        status = wait_all(acme, flood, 60)
        before = [a for a in flood if acme.adaptation(a)["finished_at"] < done["started_at"]]
        assert len(before) <= 2, before  # the job in hand and acme's next turn: not its backlog of 16
        assert set(status.values()) == {"succeeded"}


@pytest.mark.parametrize("reserved, globex_first", [(1, True), (1, False), (0, True)])
def test_a_tenant_leaves_the_last_free_worker_to_an_active_other(new_stack, reserved, globex_first):
    """Two workers, acme's backlog of slow jobs. While globex is active (a job of it claimed in the
    last TENANT_ACTIVE_SECONDS), acme runs one job at a time and globex's next job starts at once
    on the other worker; acme alone, or with no worker reserved, runs two. (Jobs one at a time: a
    batch would put several of acme's in flight on one worker.)"""
    s = new_stack(tenant_reserved_workers=reserved, job_batch_max=1)
    s.start_redis()
    slow_worker(s, 1.0)
    slow_worker(s, 1.0)
    s.start_api()
    s.wait_ready()
    r = redis.Redis(port=s.redis_port, db=1)
    with Client(s.url, KEYS["acme"]) as acme, Client(s.url, KEYS["globex"]) as globex:
        if globex_first:
            first = globex.create_adaptation("sinusoid-mlp", sin_support(98))
            assert globex.wait(first["id"], 30)["status"] == "succeeded"
        flood = [acme.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(8)]
        most, deadline = 0, time.monotonic() + 3
        while time.monotonic() < deadline:
            most = max(most, int(r.hlen(keys.flights("acme"))))
            time.sleep(0.05)
        limited = reserved and globex_first
        assert most == (1 if limited else 2)
        if limited:
            # globex's job goes in just after acme's next job starts, so that job has its whole
            # second to run: a slow machine's create-to-claim latency cannot outlast it
            running = lambda: {a.decode() for a in r.hkeys(keys.flights("acme"))}
            before = running()
            in_hand = wait_until(lambda: next(iter(running() - before), None), 30, "acme's next job")
            mine = globex.create_adaptation("sinusoid-mlp", sin_support(99))
            done = globex.wait(mine["id"], timeout=30)
            assert wait_all(acme, [in_hand], 30)[in_hand] == "succeeded"
            # started on the free worker while acme's job in hand still ran, not after it
            assert done["started_at"] < acme.adaptation(in_hand)["finished_at"]
        assert set(wait_all(acme, flood, 30).values()) == {"succeeded"}


def test_quotas_answer_429_naming_the_limit(new_stack):
    s = new_stack(tenant_max_jobs=3, tenant_max_adaptations=5, tenant_predict_images_per_second=50)
    s.start_redis()
    slow_worker(s, 2.0)
    s.start_api()
    s.wait_ready()
    with Client(s.url, KEYS["acme"], max_retries=0) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(3)]
        with pytest.raises(RapidAdaptError) as e:
            c.create_adaptation("sinusoid-mlp", sin_support(3))
        assert (e.value.status, e.value.code, e.value.details) == (429, "quota_exceeded", ["tenant_max_jobs", 3])
        assert e.value.retry_after and e.value.retry_after > 0
        with Client(s.url, KEYS["globex"]) as other:  # another tenant is not affected
            assert other.create_adaptation("sinusoid-mlp", sin_support(4))["status"] == "queued"
        c.cancel(ids[0])  # a cancelled job frees its place at once
        ids.append(c.create_adaptation("sinusoid-mlp", sin_support(5))["id"])
        for aid in ids[1:]:
            c.wait(aid, timeout=60)
        ids += [c.create_adaptation("sinusoid-mlp", sin_support(6), wait=30)["id"]]
        with pytest.raises(RapidAdaptError) as e:
            c.create_adaptation("sinusoid-mlp", sin_support(7))
        assert (e.value.code, e.value.details) == ("quota_exceeded", ["tenant_max_adaptations", 5])
        c.delete(ids[0])
        aid = c.create_adaptation("sinusoid-mlp", sin_support(8), wait=30)["id"]
        codes = []
        for _ in range(5):  # 5 x 20 images in well under a second: over 50 images/s
            try:
                c.predict(aid, [[0.0]] * 20)
                codes.append(200)
            except RapidAdaptError as err:
                codes.append((err.status, err.code, err.details[0]))
        assert (429, "rate_limited", "tenant_predict_images_per_second") in codes and codes[0] == 200


def test_bytes_quota_and_a_full_store(new_stack):
    s = new_stack(tenant_max_bytes=20_000)
    s.start_redis(maxmemory="20mb")
    s.start_worker()
    s.start_api()
    s.wait_ready()
    images = [{"input": {"image": png(105, 105, stripe=k)}, "label": f"c{k}"} for k in range(5)]
    with Client(s.url, KEYS["acme"], max_retries=0) as c:
        c.create_adaptation("omniglot-conv4", images * 2, wait=30)  # 10 images, about 8 KB
        with pytest.raises(RapidAdaptError) as e:
            c.create_adaptation("omniglot-conv4", images * 4)
        assert (e.value.code, e.value.details) == ("quota_exceeded", ["tenant_max_bytes", 20_000])
        r = redis.Redis(port=s.redis_port, db=1)
        n = 0
        while r.info("memory")["used_memory"] < 0.93 * 20 * 2**20:  # the store nearly full (others' data, say)
            r.set(f"ballast:{n}", b"x" * 2**19)
            n += 1
        time.sleep(1.1)
        with Client(s.url, KEYS["globex"], max_retries=0) as other, pytest.raises(RapidAdaptError) as e:
            other.create_adaptation("sinusoid-mlp", sin_support())
        assert (e.value.status, e.value.code) == (507, "storage_full")
        r.delete(*(f"ballast:{i}" for i in range(n)))
        assert s.workers[0].poll() is None


def png(w: int, h: int, stripe: int = 0) -> str:
    img = Image.new("L", (w, h), 255)
    if w > 10 and h > 10:
        img.paste(0, (10 + 15 * stripe, 10, 14 + 15 * stripe, h - 10))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_strips_and_oversized_images_never_inflate(stack):
    """A 1x40,000 PNG cost 1.48 GB when padded to a square: now it is refused by its side, and
    a strip within the limits is reduced before it is padded."""

    def post(image: str) -> httpx.Response:
        body = {
            "model": "omniglot-conv4",
            "support": [{"input": {"image": image}, "label": "a"}, {"input": {"image": png(105, 105)}, "label": "b"}],
        }
        return httpx.post(
            stack.url + "/v1/adaptations", json=body, headers={"Authorization": f"Bearer {KEYS['acme']}"}, timeout=30
        )

    r = post(png(1, 40_000))
    assert r.status_code == 422 and r.json()["error"]["code"] == "image_too_large"
    assert r.json()["error"]["details"] == ["support", 0, "input", "image"]
    before = rss(stack)
    assert post(png(8000, 1)).status_code == 202
    assert rss(stack) - before < 100 * 2**20  # megabytes, not gigabytes


def rss(stack) -> int:
    pid = next(p.pid for p in stack.procs if "app.serve" in " ".join(map(str, p.args)))
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def raw_http(port: int, data: bytes, wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_chunked_over_limit_is_413_and_a_short_body_408_within_seconds(new_stack):
    s = new_stack(max_body_bytes=100_000, body_timeout_seconds=2, body_deadline_seconds=4)
    s.start_redis()
    s.start_api()
    head = (
        b"POST /v1/adaptations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\n" % KEYS["acme"].encode()
    )
    chunk = b"x" * 40_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    out = raw_http(s.api_port, head + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 413") and b"body_too_large" in out
    out = raw_http(s.api_port, head + b'Content-Length: 500\r\n\r\n{"model": ')  # 490 bytes never come
    assert out.startswith(b"HTTP/1.1 408") and b"body_timeout" in out  # answered, before the client's 10 s
    # a route that takes no data refuses a body past 64 KiB, though it is under MAX_BODY_BYTES
    cancel = head.replace(b"/v1/adaptations", b"/v1/adaptations/ad_%s/cancel" % (b"0" * 32))
    out = raw_http(s.api_port, cancel + b"Content-Length: 70000\r\n\r\n")  # refused from its length, unsent
    assert out.startswith(b"HTTP/1.1 413") and b"65536 bytes" in out
    # a body that never stalls 2 s but trickles on is cut off at the overall deadline
    with socket.create_connection(("127.0.0.1", s.api_port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 500\r\n\r\n")
        began, out = time.monotonic(), b""
        while not out and time.monotonic() - began < 8:
            with contextlib.suppress(OSError):  # answered and closed between two bytes
                sock.sendall(b" ")
            sock.settimeout(1.0)
            with contextlib.suppress(TimeoutError):
                out = sock.recv(65536)
        sock.settimeout(2.0)
        with contextlib.suppress(TimeoutError, OSError):  # the body may come in a packet of its own
            while more := sock.recv(65536):  # until the server closes ("connection: close")
                out += more
    assert out.startswith(b"HTTP/1.1 408") and b"not whole within 4 s" in out


def test_a_tenants_bodies_in_processing_are_bounded_and_another_tenant_passes(new_stack):
    """One tenant's large bodies wait their turn before they are read (429 naming the limit
    past body_timeout_seconds); another tenant's request is answered meanwhile."""
    s = new_stack(tenant_inflight_bytes=2000, body_timeout_seconds=2)
    s.start_redis()
    s.start_api()
    body = json.dumps({"model": "sinusoid-mlp", "support": sin_support(0)}).encode()
    padded = body + b" " * (3000 - len(body))  # JSON allows the trailing spaces
    head = (
        b"POST /v1/adaptations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (KEYS["acme"].encode(), len(padded))
    )
    holder: dict = {}

    def trickle():  # holds acme's whole share for about 5 s, never stalling 2 s
        with socket.create_connection(("127.0.0.1", s.api_port), timeout=20) as sock:
            sock.sendall(head + body)
            for _ in range(10):
                time.sleep(0.5)
                sock.sendall(b" ")
            sock.sendall(padded[len(body) + 10 :])
            holder["answer"] = sock.recv(65536)

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(0.5)
    with Client(s.url, KEYS["globex"], max_retries=0) as other:
        assert other.create_adaptation("sinusoid-mlp", sin_support(1))["status"] == "queued"
    assert "answer" not in holder  # globex was answered while acme's body still held its share
    with Client(s.url, KEYS["acme"], max_retries=0) as c:
        with pytest.raises(RapidAdaptError) as e:
            c.create_adaptation("sinusoid-mlp", sin_support(2))
        assert (e.value.status, e.value.code, e.value.details) == (429, "rate_limited", ["tenant_inflight_bytes", 2000])
        assert e.value.retry_after and "answer" not in holder  # refused after waiting its turn behind the share
        t.join(20)
        assert holder["answer"].startswith(b"HTTP/1.1 202")
        assert c.create_adaptation("sinusoid-mlp", sin_support(3))["status"] == "queued"  # the share is back


def test_405_names_the_allowed_methods(stack):
    r = httpx.put(stack.url + "/v1/models", headers={"Authorization": f"Bearer {KEYS['acme']}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


def test_light_on_dark_images_are_read_as_dark_ink(stack):
    """An image whose frame is dark is inverted first: the same drawing either way round
    gets the same prediction."""
    from PIL import ImageOps

    from app.demo import omniglot_task

    support, queries, _ = omniglot_task(seed=5, n_way=5, n_query=1)
    flip = lambda v: {"image": base64.b64encode(_invert(base64.b64decode(v["image"]), ImageOps)).decode()}
    with Client(stack.url, KEYS["acme"]) as c:
        a = c.create_adaptation("omniglot-conv4", support, mode="fast", wait=30)
        plain, inverted = c.predict(a["id"], queries), c.predict(a["id"], [flip(q) for q in queries])
    assert [p["label"] for p in plain] == [p["label"] for p in inverted]


def _invert(data: bytes, ImageOps) -> bytes:
    buf = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(data)).convert("L")).save(buf, "PNG")
    return buf.getvalue()


def test_a_worker_told_to_stop_finishes_its_job_takes_no_new_one_and_its_successor_runs_the_rest(new_stack):
    """A rolling update of the workers: SIGTERM is Celery's warm shutdown. (Jobs one at a time, so
    that the job in hand is one job.)"""
    s = new_stack(job_batch_max=1)
    s.start_redis()
    old = slow_worker(s, 2.0)
    s.start_api()
    s.wait_ready()
    r = redis.Redis(port=s.redis_port, db=1)
    with Client(s.url, KEYS["acme"]) as c:
        ids = [c.create_adaptation("sinusoid-mlp", sin_support(i))["id"] for i in range(3)]
        wait_until(lambda: c.adaptation(ids[0])["status"] == "running", 30, "the first job to run")
        old.send_signal(signal.SIGTERM)  # the worker's main process, as Kubernetes or Compose stops it
        old.wait(60)
        assert c.adaptation(ids[0])["status"] == "succeeded"  # the job in hand was finished
        assert [c.adaptation(a)["status"] for a in ids[1:]] == ["queued", "queued"]  # no new one taken
        assert not r.hgetall(keys.flights("acme")) and not r.hgetall("ra:workers")  # gone from the living at once
        s.start_worker()  # its successor
        status = wait_all(c, ids, 60)
        assert list(status.values()) == ["succeeded"] * 3, s.logs()
        assert [c.adaptation(a)["attempts"] for a in ids] == [1, 1, 1]  # each run once: none put back


HEALTH = """
import runpy, sys
try:
    runpy.run_module("worker.health", run_name="__main__")
except SystemExit as end:
    print(end.code, "torch" in sys.modules)
"""


def test_a_worker_container_s_health_check_is_its_own_worker_s_beat_and_imports_no_torch(new_stack, tmp_path):
    """`python -m worker.health` (every 10 s in each worker container) passes while a worker sharing
    its temporary directory beats, fails for another directory (another container; on a host network
    all have the host's name, which the check used to match), and fails a heartbeat window after
    that worker stopped. It used to import torch: 1.5 s of CPU a check."""
    mine, other = tmp_path / "container-a", tmp_path / "container-b"
    mine.mkdir(), other.mkdir()
    s = new_stack()
    s.env["TMPDIR"] = str(mine)
    s.start_redis()
    w = s.start_worker()

    def check(tmpdir) -> list[str]:
        env = s.env | {"TMPDIR": str(tmpdir)}
        out = subprocess.run([sys.executable, "-c", HEALTH], cwd=ROOT, env=env, capture_output=True, text=True)
        return out.stdout.split()

    wait_until(lambda: check(mine) == ["0", "False"], 60, "the worker's first beat")
    assert check(other) == ["1", "False"]
    os.killpg(w.pid, signal.SIGTERM)
    w.wait(30)
    wait_until(lambda: check(mine) == ["1", "False"], 10, "the check failing once the beats stopped")
