"""Free cores: whether a prediction pass may take a second torch thread (app/api/predictor.py).

One torch thread per process keeps the processes that share the cores (API, workers) from
oversubscribing them under load; but a lone request then runs on one core while the other
idles, and a 20-image pass takes 6.8 ms on one thread against 4.7 on two. So the interactive
lane goes wide while the rest of the host left the cores free lately: `FreeCores` reads the
CPUs' idle time and the process's own CPU time over windows of at least 50 ms, cheap enough
(tens of microseconds, once a window) to ask before every pass. The process's own time counts
as free: else a wide pass's second thread would read as someone else's load and turn the next
pass narrow. Its background threads' time (app/core/priority.py) counts as load: a bulk lane
busy with a large request keeps the interactive lane narrow, so that a worker keeps its core.

torch sets the thread count of the calling thread (OpenMP's per-thread setting, taken up
by each thread at its first parallel operation), so the lane can change its own count
pass by pass and leave the other threads' alone; with another parallel backend the count
is process-wide, and nothing goes wide. Where neither cpuidle nor /proc/stat can be read
(not Linux), no core counts as free.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from . import priority

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
WINDOW = 0.05  # seconds: five ticks of each CPU's idle count
SPARE = 0.5  # a wide pass's threads need this many cores free, less SPARE (the client, Redis, a heartbeat)


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (a
    container limited to 1.5 CPUs on a 16-core host gets 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def per_thread_counts() -> bool:
    """Whether torch's thread count is each thread's own (the OpenMP backend, as Linux wheels are built)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def wide_threads(wanted: int) -> int:
    """Threads a wide pass may take: `wanted`, at most the usable CPUs; 1 where counts are process-wide."""
    return max(1, min(wanted, usable_cpus())) if per_thread_counts() else 1


class FreeCores:
    """Cores of this process's CPUs that the rest of the host left free over the last window of
    at least WINDOW seconds: the CPUs, less what was neither idle nor the caller's own CPU time
    (`own`: a lane counts its process's work at normal priority, a wide pass's second thread
    included, which must not read as someone else's load). Read again at most
    once a window; the first call only starts the first window. The idle time comes from
    cpuidle's per-state counters (microseconds) where the kernel has them, else from /proc/stat
    (10 ms ticks per CPU: a 50 ms window of two CPUs is then known to 0.4 of a core only)."""

    def __init__(self, own, window: float = WINDOW, clock=time.monotonic, root: Path = Path("/")):
        self.window, self.clock, self.own = window, clock, own
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.n = len(cpus)
        states = [root / f"sys/devices/system/cpu/cpu{i}/cpuidle" for i in cpus]
        self.states = [p / "time" for d in states if d.is_dir() for p in sorted(d.glob("state*"))]
        if len({p.parent.parent for p in self.states}) != len(cpus):
            self.states = []  # cpuidle on only some CPUs (or none): /proc/stat for all
        self.stat, self.names = root / "proc/stat", {f"cpu{i}".encode() for i in cpus}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last: tuple | None = None  # (when, own, idle) at the window's start
        self.cores = 0.0

    def seconds(self) -> float | None:
        """Idle seconds of this process's CPUs so far; None where neither source can be read."""
        try:
            if self.states:
                return sum(int(p.read_bytes()) for p in self.states) / 1e6
            with self.stat.open("rb") as f:
                ticks = 0
                for line in f:
                    if not line.startswith(b"cpu"):
                        break
                    name, *counts = line.split()
                    if name in self.names:
                        ticks += int(counts[3]) + int(counts[4])  # idle and I/O wait
                return ticks / self.tick
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> float:
        now = self.clock()
        if self.last is None:
            self.last = (now, self.own(), self.seconds())
            return self.cores
        then, own_then, idle_then = self.last
        if now - then >= self.window:
            own, idle = self.own(), self.seconds()
            if idle is None or idle_then is None:
                self.cores = 0.0
            else:
                others = self.n - ((idle - idle_then) + (own - own_then)) / (now - then)
                self.cores = self.n - max(0.0, others)
            self.last = (now, own, idle)
        return self.cores


def pin(threads: int) -> None:
    """This thread's torch thread count from now on. torch takes the process-wide count at a
    thread's first parallel operation; asking for the count does that at once, so a thread
    starting while the interactive lane is wide does not keep its count."""
    torch.set_num_threads(threads)
    torch.get_num_threads()


class PassThreads:
    """A lane's torch threads pass by pass: `wide` while the rest of the host left the cores
    free lately, else `narrow` (the process's count). Used from the lane's own thread only."""

    def __init__(self, narrow: int, wanted: int, free: FreeCores | None = None):
        self.narrow, self.wide = narrow, wide_threads(wanted)
        self.free = free if free is not None else FreeCores(self.own) if self.wide > narrow else None

    def own(self) -> float:
        """The CPU seconds of this process's work at normal priority: the lane and its wide passes'
        other threads, the event loop answering the same requests; background threads excluded."""
        return time.process_time() - priority.background_seconds()

    def start(self) -> None:
        pin(self.narrow)

    @contextlib.contextmanager
    def one_pass(self):
        """-> the threads this pass runs on (and the process-wide count back to narrow after it)."""
        wide = self.free is not None and self.free() >= self.wide - SPARE
        if not wide:
            yield self.narrow
            return
        torch.set_num_threads(self.wide)
        try:
            yield self.wide
        finally:
            torch.set_num_threads(self.narrow)
