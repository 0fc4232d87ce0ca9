"""Background CPU priority: the means (a thread's nice value, a session's autogroup) and
who gets it (a worker's job whose tenant has more waiting, the API's bulk lane)."""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.core import priority
from app.demo import sinusoid_task
from bench.stack import KEYS, ROOT, wait_until
from rapid_adapt_client import Client
from worker import tasks

from .workers import slow_worker


def test_a_thread_lowers_itself_and_no_other():
    seen = {}

    def body():
        priority.lower_this_thread(7)
        seen["tid"] = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, seen["tid"])

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["nice"] == 7
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 7  # this thread is as it was


def test_a_job_computes_on_a_thread_of_its_own_at_its_priority():
    """`on_own_thread`: the work runs on another thread at the job's nice value, in the caller's
    context (its trace span), and hands back what it returned or raised; the caller's thread
    keeps its own priority, so the next job can run at normal priority again."""
    label = contextvars.ContextVar("label")
    label.set("the job's span")
    seen = {}

    def work(pause):
        pause()
        seen.update(tid=threading.get_native_id(), label=label.get())
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, seen["tid"])
        return "weights"

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert tasks.on_own_thread(7, work, lambda: None) == "weights"
    assert seen["tid"] != threading.get_native_id() and seen["nice"] == 7 and seen["label"] == "the job's span"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before

    def bad(pause):
        raise ValueError("a support set adapt refuses")

    with pytest.raises(ValueError, match="refuses"):
        tasks.on_own_thread(0, bad, lambda: None)


def test_a_soft_time_limit_stops_the_job_at_its_next_pause():
    """The soft time limit is a signal whose handler raises on the waiting thread: the job's
    thread then stops at its next pause, and the waiting thread raises the limit's exception."""

    class Limit(Exception):
        pass

    def strike(*_):
        raise Limit

    steps, ended = [], []

    def work(pause):
        try:
            for k in range(500):
                time.sleep(0.01)  # a step
                steps.append(k)
                if k == 0:  # the limit strikes once the job is under way, however slowly its thread started
                    signal.setitimer(signal.ITIMER_REAL, 0.05)
                pause()
        finally:
            ended.append(sys.exc_info()[0])

    old = signal.signal(signal.SIGALRM, strike)
    try:
        with pytest.raises(Limit):
            tasks.on_own_thread(0, work, lambda: None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert ended == [tasks.Interrupted]  # the job's thread ended, at a pause
    assert 0 < len(steps) < 500


SESSION_PROBE = """
import os, subprocess, sys, time
from app.core import priority
depth = int(sys.argv[1])
if depth:  # a child of this process, `depth` levels down, reports
    raise SystemExit(subprocess.call([sys.executable, "-c", sys.argv[2], str(depth - 1), sys.argv[2]]))
print(priority.set_session(10), priority.session_nice())
priority.set_session(0)  # within 100 ms of the first: unprivileged, refused and made again shortly
for _ in range(100):  # however loaded the machine, the late write lands
    if priority.session_nice() == 0:
        break
    time.sleep(0.05)
print(priority.session_nice())
"""


def probe(depth: int) -> str:
    """What set_session does `depth` processes below a session leader of its own."""
    out = subprocess.run(
        [sys.executable, "-c", SESSION_PROBE, str(depth), SESSION_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(
    priority.session_nice() is None or not priority.autogroups_weigh(),
    reason="autogroups do not weigh here: the kernel keeps none, or this process has a CPU cgroup of its own",
)
def test_a_session_is_weighed_by_its_leader_or_its_child_and_comes_back_to_normal():
    assert probe(0) == ["True", "10", "0"]  # the leader (a worker's main process)
    assert probe(1) == ["True", "10", "0"]  # its child (a worker's pool process)
    assert probe(2) == ["False", "0", "0"]  # further down: someone else's session, left alone


@pytest.mark.parametrize(
    "cgroup, weigh",
    [
        ("12:cpu,cpuacct:/\n4:memory:/user.slice\n0::/\n", True),  # v1, the root CPU cgroup
        ("12:cpu,cpuacct:/docker/3e87a1\n0::/\n", False),  # v1, a container's
        ("0::/\n", True),  # v2 (unified), the root
        ("0::/system.slice/rapid-adapt-worker.service\n", False),  # v2, a systemd unit's
        ("3:memory:/\n", False),  # no CPU controller found: nothing is known, nothing is written
    ],
)
def test_a_session_weighs_only_in_the_root_cpu_cgroup(tmp_path, cgroup, weigh):
    (tmp_path / "cgroup").write_text(cgroup)
    assert priority.autogroups_weigh(tmp_path / "cgroup") is weigh
    assert priority.autogroups_weigh(tmp_path / "missing") is False


class FakeAutogroup:
    """/proc/self/autogroup as the kernel keeps it for an unprivileged process: after a write, the
    next ones are refused (EAGAIN) until its 100 ms are over (`refusing` set back by the test, so
    that no timing of a loaded machine decides what is refused)."""

    def __init__(self):
        self.nice, self.writes, self.refusing = 0, [], False

    def read_text(self) -> str:
        return f"/autogroup-7 nice {self.nice}\n"

    def write_text(self, text: str) -> None:
        if self.refusing:
            raise OSError(11, "Resource temporarily unavailable")
        self.nice, self.refusing = int(text), True
        self.writes.append(int(text))


@pytest.fixture
def session_leader(monkeypatch):
    """This process as a session leader whose autogroup weighs, its autogroup a fake one."""
    fake = FakeAutogroup()
    monkeypatch.setattr(priority, "AUTOGROUP", fake)
    monkeypatch.setattr(priority.os, "getsid", lambda pid: os.getpid())
    monkeypatch.setattr(priority, "autogroups_weigh", lambda: True)
    return fake


def test_a_refused_session_weight_is_set_later_without_waiting(session_leader):
    """A job switching the session to background and straight back to normal priority never waits
    for the kernel (it used to sleep 0.11 s, which made every yielded-to job in a container 0.11 s
    slower); the value last asked for is written once the kernel takes a write again."""
    assert priority.set_session(10) is True
    assert priority.set_session(0) is False  # refused: within 100 ms
    assert priority.set_session(5) is False  # refused again; 5 is now the value asked for
    time.sleep(0.3)  # the retries meanwhile are refused too, and made again
    assert session_leader.writes == [10]
    session_leader.refusing = False  # the kernel's 100 ms are over
    wait_until(lambda: session_leader.writes == [10, 5], 2, "the refused weight written later")
    assert priority.session_nice() == 5


def test_a_session_weight_that_counts_for_nothing_is_never_written(session_leader, monkeypatch):
    """In a container the cgroup, not the session, is weighed: the worker leaves its session alone."""
    monkeypatch.setattr(priority, "autogroups_weigh", lambda: False)
    assert priority.set_session(10) is False
    time.sleep(0.2)
    assert session_leader.writes == [] and priority.session_nice() == 0


def test_a_tenants_backlog_runs_at_background_priority_and_a_lone_job_does_not(new_stack):
    """One worker: acme queues four slow jobs, then globex one. While acme has jobs waiting,
    the worker runs them on a thread at background priority (seen in /proc, and in the job's
    metrics); globex's lone job and acme's last run at normal priority, and once the jobs have
    ended no thread of the worker is left at background priority. (One job at a time: a batch
    of them runs at normal priority unless every job of it has more of its tenant's waiting.)"""
    s = new_stack(job_batch_max=1)
    s.start_redis()
    w = slow_worker(s, 0.6)
    s.start_api()
    s.wait_ready()
    seen, stop = set(), threading.Event()
    nices = lambda: [n for pid in in_group(w.pid) for n in thread_nices(pid)]  # noqa: E731  the worker's threads

    def watch():
        while not stop.wait(0.02):
            seen.update(nices())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with Client(s.url, KEYS["acme"]) as acme, Client(s.url, KEYS["globex"]) as globex:
            flood = [acme.create_adaptation("sinusoid-mlp", sinusoid_task(i)[0])["id"] for i in range(4)]
            mine = globex.create_adaptation("sinusoid-mlp", sinusoid_task(99)[0])["id"]
            done = {aid: c.wait(aid, timeout=60) for c, ids in ((acme, flood), (globex, [mine])) for aid in ids}
    finally:
        stop.set()
        watcher.join()
    assert {r["status"] for r in done.values()} == {"succeeded"}
    got = {aid: r["metrics"]["cpu_priority"] for aid, r in done.items()}
    assert got[mine] == "normal"
    assert got[flood[1]] == "background"  # claimed while acme's #3 and #4 waited
    assert got[flood[-1]] == "normal"  # nothing of acme's left waiting
    assert 10 in seen  # the kernel weighed the job's thread at background priority
    wait_until(lambda: nices() and 10 not in nices(), 5, "no thread of the worker left at background priority")


def stat_fields(path: Path) -> list[str]:
    """/proc/.../stat from its third field (state) on: the command before it may hold spaces."""
    return path.read_text().rpartition(")")[2].split()


def thread_nices(pid: int) -> list[int]:
    """The nice value (field 19) of every thread of a process."""
    return [int(stat_fields(stat)[16]) for stat in Path(f"/proc/{pid}/task").glob("*/stat")]


def in_group(pgid: int) -> list[int]:
    """The processes of a process group (bench/stack.py starts each process as one)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat_fields(stat)[2]) == pgid:
                out.append(int(stat.parent.name))
        except OSError:  # gone meanwhile
            continue
    return out


def test_the_api_predicts_large_requests_in_a_background_lane(stack):
    """Each API process has a thread at background priority (the bulk lane), and a request
    larger than one pass is answered through it with the same answers as in passes of one."""
    api_pids = in_group(stack.api.pid)  # app.serve and its uvicorn processes
    lanes = [pid for pid in api_pids if 10 in thread_nices(pid)]
    assert lanes, {pid: thread_nices(pid) for pid in api_pids}
    with Client(stack.url, KEYS["acme"]) as c:
        aid = c.create_adaptation("sinusoid-mlp", sinusoid_task(5)[0], wait=30)["id"]
        xs = [[x / 100] for x in range(-250, 250, 5)] * 2  # 200 inputs: more than one pass (64)
        many = c.predict(aid, xs)
        few = [c.predict(aid, xs[i : i + 20]) for i in range(0, 40, 20)]
    value = lambda p: p["value"][0] if isinstance(p["value"], list) else p["value"]  # noqa: E731
    assert len(many) == 200
    assert [value(p) for p in many[:40]] == pytest.approx([value(p) for f in few for p in f], abs=1e-5)
