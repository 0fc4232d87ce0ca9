"""Free cores (app/core/idle.py): a prediction pass takes a second torch thread only while
other processes leave the cores free, and every other thread keeps its own count."""

import os
import threading
import time

import pytest
import torch

from app.core import idle, priority

CPUS = sorted(os.sched_getaffinity(0))


def fake_host(root, idle_us: list[int] | None, ticks: list[int]):
    """cpuidle counters (microseconds, split over two states) or none, and /proc/stat's ticks, per CPU."""
    for i, cpu in enumerate(CPUS):
        d = root / f"sys/devices/system/cpu/cpu{cpu}/cpuidle"
        if idle_us is None:
            continue
        for state, part in (("state0", idle_us[i] // 4), ("state1", idle_us[i] - idle_us[i] // 4)):
            (d / state).mkdir(parents=True, exist_ok=True)
            (d / state / "time").write_text(f"{part}\n")
    (root / "proc").mkdir(exist_ok=True)
    lines = [f"cpu  {sum(ticks)} 0 0 {sum(ticks)} 0 0 0 0 0 0"]
    lines += [f"cpu{cpu} 7 0 3 {t - 2} 2 0 0 0 0 0" for cpu, t in zip(CPUS, ticks)]  # idle + iowait = t
    (root / "proc/stat").write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n")


def test_free_cores_are_the_cpus_less_what_other_processes_used(tmp_path):
    n = len(CPUS)
    clock, own = [100.0], [5.0]
    fake_host(tmp_path, [0] * n, [0] * n)
    free = idle.FreeCores(lambda: own[0], window=0.05, clock=lambda: clock[0], root=tmp_path)
    assert free() == 0.0  # the first call starts the first window
    # 0.1 s in which the caller used one core and the rest sat idle: every core is free to it
    clock[0], own[0] = 100.1, 5.1
    fake_host(tmp_path, [100_000 * (n - 1) // n] * n, [0] * n)
    assert free() == pytest.approx(n)
    # the next 0.1 s another process kept one core busy as well
    clock[0], own[0] = 100.2, 5.2
    before = 100_000 * (n - 1) // n
    fake_host(tmp_path, [before + 100_000 * (n - 2) // n] * n, [0] * n)
    assert free() == pytest.approx(n - 1, abs=1e-3)
    # within a window the counters are not read again
    clock[0] = 100.22
    fake_host(tmp_path, [0] * n, [0] * n)
    assert free() == pytest.approx(n - 1, abs=1e-3)


def test_without_cpuidle_free_cores_come_from_proc_stat_and_without_either_none_are(tmp_path):
    n, tick = len(CPUS), os.sysconf("SC_CLK_TCK")
    clock, own = [0.0], [0.0]
    fake_host(tmp_path, None, [1000] * n)
    free = idle.FreeCores(lambda: own[0], window=0.05, clock=lambda: clock[0], root=tmp_path)
    free()
    clock[0] = 2.0  # two seconds in which the other processes kept half a core busy and this one none
    total = tick * (2 * n - 1)
    fake_host(tmp_path, None, [1000 + total // n + (i < total % n) for i in range(n)])
    assert free() == pytest.approx(n - 0.5)
    (tmp_path / "proc/stat").unlink()
    clock[0] = 3.0
    assert free() == 0.0  # unreadable: never wide


def test_the_usable_cpus_are_capped_by_the_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert idle.usable_cpus(cpu_max) == len(CPUS)
    cpu_max.write_text("150000 100000\n")
    assert idle.usable_cpus(cpu_max) == 1  # 1.5 CPUs: a second thread would be throttled
    cpu_max.write_text(f"{100000 * (len(CPUS) + 8)} 100000\n")
    assert idle.usable_cpus(cpu_max) == len(CPUS)


class Free:
    def __init__(self, cores: float):
        self.cores = cores

    def __call__(self) -> float:
        return self.cores


def in_thread(fn):
    """Run fn in a thread of its own (torch's count is per thread) and restore the process-wide count."""
    before, out = torch.get_num_threads(), []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    torch.set_num_threads(before)
    return out[0]


def test_a_pass_goes_wide_only_while_the_cores_are_free_and_narrow_again_after(monkeypatch):
    monkeypatch.setattr(idle, "usable_cpus", lambda: 4)
    free = Free(2.0)
    lane = idle.PassThreads(1, 2, free)
    assert lane.wide == (2 if idle.per_thread_counts() else 1)

    def passes():
        lane.start()
        seen = []
        for cores in (2.0, 1.6, 1.4, 0.3):
            free.cores = cores
            with lane.one_pass() as n:
                seen.append((n, torch.get_num_threads()))
            assert torch.get_num_threads() == 1  # narrow again after the pass
        return seen

    assert in_thread(passes) == [(lane.wide, lane.wide), (lane.wide, lane.wide), (1, 1), (1, 1)]


def test_background_threads_count_as_load_and_the_rest_of_the_process_as_the_lane_s_own():
    """A busy bulk lane (a thread at background priority) keeps the interactive lane narrow, so a
    worker beside it keeps its core; the event loop and a wide pass's second thread count as the
    lane's own time, else a wide pass would turn the next one narrow. Ended threads stay counted."""
    lane = idle.PassThreads(1, 2, Free(0.0))

    def burn(seconds: float, nice: int, burnt: threading.Event, end: threading.Event) -> None:
        priority.lower_this_thread(nice)
        started = time.thread_time()
        while time.thread_time() - started < seconds:
            pass
        burnt.set()
        end.wait(5)

    for nice, background in ((5, True), (0, False)):
        own, before = lane.own(), priority.background_seconds()
        burnt, end = threading.Event(), threading.Event()
        t = threading.Thread(target=burn, args=(0.3, nice, burnt, end))
        t.start()
        burnt.wait(5)
        spent_in_background, own_spent = priority.background_seconds() - before, lane.own() - own
        end.set()
        t.join()
        if background:
            assert spent_in_background >= 0.25 and own_spent < 0.1
            assert priority.background_seconds() - before >= spent_in_background  # ended, still counted
        else:
            assert spent_in_background == 0 and own_spent >= 0.29


def test_a_lane_asked_for_one_thread_never_reads_the_cores(monkeypatch):
    monkeypatch.setattr(idle, "usable_cpus", lambda: 4)
    assert idle.PassThreads(1, 1).free is None
    monkeypatch.setattr(idle, "per_thread_counts", lambda: False)  # a process-wide count: never changed per pass
    assert idle.PassThreads(1, 2).free is None and idle.wide_threads(2) == 1


def test_a_thread_pinned_while_another_is_wide_keeps_its_own_count():
    wide_now, pinned = threading.Event(), threading.Event()
    counts = {}

    def wide():
        idle.pin(1)
        torch.set_num_threads(2)  # as a wide pass does: its own count and the process-wide one
        wide_now.set()
        pinned.wait(5)
        counts["wide"] = torch.get_num_threads()
        torch.set_num_threads(1)

    def other():
        wide_now.wait(5)
        idle.pin(1)
        pinned.set()
        counts["other"] = torch.get_num_threads()

    def both():
        threads = [threading.Thread(target=wide), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return counts

    got = in_thread(both)
    assert got["other"] == 1
    assert got["wide"] == (2 if idle.per_thread_counts() else 1)


def test_a_wide_pass_answers_as_a_narrow_one(monkeypatch):
    from app.api.predictor import forward_merged
    from models import registry
    from models.adapt import adapt
    from models.research import omniglot

    monkeypatch.setattr(idle, "usable_cpus", lambda: 4)
    model, _ = registry.shipped().load("omniglot-conv4")
    ds = omniglot.load()
    items = [(adapt(model, ds.images[:20], torch.arange(20)).fast, ds.images[40:80])]
    free = Free(0.0)
    lane = idle.PassThreads(1, 2, free)

    def both():
        lane.start()
        outs = []
        for cores in (0.0, 4.0):
            free.cores = cores
            with lane.one_pass():
                outs.append(forward_merged(model, items, 64)[0])
        return outs

    narrow, wide = in_thread(both)
    torch.testing.assert_close(wide, narrow, rtol=1e-5, atol=1e-5)
