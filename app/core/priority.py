"""Background CPU priority: work that can wait yields the cores to work someone is waiting
for, without ever leaving them idle (a nice value weighs a thread against others that want
the core; alone, it runs at full speed).

Background work is a prediction request larger than one pass (the API's bulk lane), the
decoding of a support set larger than one pass (`background_threads`), and a job whose
tenant has more jobs waiting (a worker runs each job on a thread of its own, at its
priority: worker/tasks.py). Measured in bench/results/flood*.md: one tenant's flood of
both on two cores, and another tenant's latencies with and without.

Linux weighs threads at two levels: within one scheduling group by each thread's nice value
(`lower_this_thread`, `renice_this_thread`), and between groups by the group's weight. A group
is an autogroup (one per session, for processes outside a CPU cgroup of their own, weighed by
the session's nice value: `set_session`) or a cgroup (a container). So the nice values of the
API's and the workers' threads weigh against each other where they share a session, as
scripts/quickstart.sh and bench/stack.py start them; a worker in a session of its own weighs
its session instead. Between containers only the cgroups' CPU weights count: there the nice
values still order the threads within each (the bulk lane after the interactive one, a job
after the one it yielded to). Elsewhere than Linux, or without permission, all this does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

AUTOGROUP, TASKS, CGROUPS = Path("/proc/self/autogroup"), Path("/proc/self/task"), Path("/proc/self/cgroup")
_background: dict[int, float] = {}  # native id of each background thread -> its CPU seconds when last read
_gone = 0.0  # CPU seconds of background threads that have ended
_lock = threading.Lock()
_wanted: int | None = None  # the session weight last asked for (`set_session`)
_retry: threading.Timer | None = None  # a refused write of it, made again shortly


def lower_this_thread(nice: int) -> None:
    """This thread at `nice` for the rest of its life (without privilege it cannot come back),
    and counted in `background_seconds`."""
    if nice <= 0:
        return
    with _lock:
        _background[threading.get_native_id()] = 0.0
    renice_this_thread(nice)


def renice_this_thread(nice: int) -> None:
    """This thread at `nice` (> 0) for the rest of its life; threads it starts inherit it."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)  # Linux: a thread id is a pid


def background_seconds() -> float:
    """CPU seconds this process's background threads have used, ended ones included (from
    /proc/self/task, in clock ticks; 0 elsewhere). The interactive lane counts them as load
    (app/core/idle.py): beside a busy bulk lane a wide pass would take a worker's core."""
    global _gone
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    with _lock:
        for tid in list(_background):
            try:
                fields = (TASKS / str(tid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
                _background[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, ValueError, IndexError):  # ended: its last reading stays counted
                _gone += _background.pop(tid)
        return _gone + sum(_background.values())


@functools.cache
def background_threads(nice: int, workers: int = 4) -> ThreadPoolExecutor:
    """A pool whose threads run at `nice`, for work that can wait (one per process and nice)."""
    return ThreadPoolExecutor(workers, "background", initializer=lower_this_thread, initargs=(nice,))


def session_nice() -> int | None:
    """This session's autogroup nice value; None where the kernel keeps no autogroups."""
    try:
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def autogroups_weigh(cgroups: Path = CGROUPS) -> bool:
    """Whether a session's weight counts at all: Linux uses autogroups only for processes in the
    root CPU cgroup. In a container (or a systemd unit with its own CPU cgroup) the cgroup is the
    group: there a session's weight changes nothing, and an unprivileged write of it is refused
    when another was made in the last 100 ms, machine-wide."""
    try:
        lines = [line.split(":", 2) for line in cgroups.read_text().splitlines()]
    except OSError:
        return False
    v1 = [path for _, controllers, path in lines if "cpu" in controllers.split(",")]
    v2 = [path for hierarchy, controllers, path in lines if hierarchy == "0" and not controllers]
    return (v1 or v2 or ["?"])[0] == "/"


def set_session(nice: int) -> bool:
    """Weigh this process's autogroup at `nice` (raising it needs no privilege, nor does
    coming back to 0), only where the session is this process's or its parent's (a worker's
    pool process): never a shell's, or an API's started in the same session; and only where
    autogroups weigh. Never waits: the kernel takes an unprivileged write at most every 100 ms,
    machine-wide, so a refused one is made 0.11 s later, with the value last asked for then.
    -> whether the autogroup is at `nice` now."""
    global _wanted
    if not hasattr(os, "getsid") or os.getsid(0) not in (os.getpid(), os.getppid()) or not autogroups_weigh():
        return False
    _wanted = nice
    now = session_nice()
    if now is None or now == nice:
        return now == nice
    return _write_session(nice)


def _write_session(nice: int) -> bool:
    global _retry
    try:
        AUTOGROUP.write_text(str(nice))
        return True
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            with _lock:
                if _retry is None:  # else one is already due
                    _retry = threading.Timer(0.11, _catch_up)
                    _retry.daemon = True
                    _retry.start()
        return False


def _catch_up() -> None:
    """A refused write, made again with the value last asked for (and again later if refused)."""
    global _retry
    with _lock:
        _retry = None
    if _wanted is not None and session_nice() not in (None, _wanted):
        _write_session(_wanted)
