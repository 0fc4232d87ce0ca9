"""A worker's upkeep thread: its heartbeat, and with it the reaper's turn, the ticket
top-up, the sweep of expired ids (lifecycle.py) and the tally of finished jobs (stats.py),
every `worker_heartbeat_seconds`.

Started when the worker is ready and stopped when it shuts down (worker/celery_app.py).
A task that raises is logged (once per streak, with its traceback) and counted, here and
in Redis (`upkeep_errors:{task}` in ra:stats, on /metrics), and the thread keeps going:
an operator learns that the reaper stopped working instead of finding jobs stuck."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from .. import keys
from . import heartbeats
from .lifecycle import Jobs

log = logging.getLogger("rapid_adapt.upkeep")


class Upkeep:
    def __init__(self, jobs: Jobs, worker: str, lock_name: str, on_beat: Callable[[], None] = lambda: None):
        """worker: the name the worker's jobs are held by (its heartbeat); lock_name: this
        process's, for the reaper's and sweeper's locks; on_beat: called after each heartbeat
        that reached Redis (the container health check's mark, worker/health.py)."""
        self.jobs, self.worker, self.lock_name, self.on_beat = jobs, worker, lock_name, on_beat
        self.errors: Counter[str] = Counter()  # task -> exceptions so far
        self._unreported: Counter[str] = Counter()
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._migrated = False

    def start(self) -> None:
        self._run("heartbeat", self._beat)
        self._thread = threading.Thread(target=self._loop, name="upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and take this worker out of the living at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._run("stats", self.jobs.tally.flush)
        self._run("heartbeat", lambda: heartbeats.forget(self.jobs.store.r, self.worker))

    def turn(self) -> None:
        """One round: beat, reap, top up, sweep, each on its own. Only the worker whose turn it is
        to reap tops up, so N workers do not count the backlog N times a beat."""
        self._run("heartbeat", self._beat)
        if not self._migrated:  # until it has once worked: an upgraded store's keys in this version's layout
            self._migrated = self._run("migrate", self.jobs.store.migrate) is not None
        if self._run("reaper", lambda: self.jobs.reap(self.lock_name)) is not None:
            self._run("top_up", self.jobs.top_up)
        self._run("sweeper", lambda: self.jobs.sweep(self.lock_name))
        self._run("stats", self.jobs.tally.flush)
        if self._unreported:
            self._run("report", self._report)

    def _beat(self) -> None:
        heartbeats.beat(self.jobs.store.r, self.worker)
        self.on_beat()

    def _loop(self) -> None:
        while not self._stop.wait(self.jobs.settings.worker_heartbeat_seconds):
            self.turn()

    def _run(self, task: str, call):
        """-> what `call` returned; None when it raised (logged and counted)."""
        try:
            result = call()
        except Exception:
            self.errors[task] += 1
            self._unreported[task] += 1
            if task not in self._failing:
                self._failing.add(task)
                log.exception("upkeep task failed", extra={"task": task})
            return
        if task in self._failing:
            self._failing.discard(task)
            log.warning("upkeep task recovered", extra={"task": task, "errors": self.errors[task]})
        return result

    def _report(self) -> None:
        p = self.jobs.store.r.pipeline(transaction=False)
        for task, n in self._unreported.items():
            p.hincrby(keys.STATS, f"upkeep_errors:{task}", n)
        p.execute()
        self._unreported.clear()
