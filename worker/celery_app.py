"""The Celery app: `celery -A worker.celery_app:app worker`. Its configuration lives in
app/core/jobs.py so the API sends exactly what the worker accepts; the tasks module is
named in `include` and imported by Celery, never by this module."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from celery import signals

from app.core import heartbeats
from app.core.adaptation import device, warm_up
from app.core.config import get_settings
from app.core.jobs import QUEUE, TASK_NAME, make_celery
from app.core.scheduler import Scheduler
from app.core.store import Store
from models import registry

log = logging.getLogger("rapid_adapt.worker")
app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@signals.setup_logging.connect
def _logging(**_):
    """JSON lines instead of Celery's own log format."""
    from app.core.logs import configure

    configure()


@signals.worker_process_init.connect
def _init_process(**_):
    """Every base loaded once per worker process, on the GPU when there is one."""
    settings = get_settings()
    registry.configure(settings.models_dirs(), settings.models_poll_seconds)
    warm_up(device(), settings.torch_threads)


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    """A heartbeat in Redis every few seconds (/readyz counts the workers alive), and with it
    the reaper's turn (`reap`) and the sweep of expired ids (`sweep`)."""
    settings = get_settings()
    store = Store(settings)
    r = store.r
    name = sender.hostname if sender else f"celery@{socket.gethostname()}"  # what a task sees as its hostname
    stop = threading.Event()

    def beat():
        while not stop.wait(settings.worker_heartbeat_seconds):
            with contextlib.suppress(Exception):  # Redis away: readiness will say so
                heartbeats.beat(r, name)
                reap(r, store.scheduler, settings)
                sweep(store, settings.sweep_seconds)

    heartbeats.beat(r, name)
    threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_):
        stop.set()
        with contextlib.suppress(Exception):
            heartbeats.forget(r, name)


# a job in flight whose beat (sent by a thread while the job runs) is this old is not running
STALE_SECONDS = 30.0


def reap(r, scheduler: Scheduler, settings) -> None:
    """One worker at a time (a 2-second lock): put back the jobs no live worker holds, and
    send tickets for pending jobs that have none (lost with a dead worker or a restarted broker)."""
    if not r.set("ra:reaper", name_of_this_process(), nx=True, px=int(2000 * settings.worker_heartbeat_seconds)):
        return
    back = scheduler.reap(settings.heartbeat_window, max(STALE_SECONDS, settings.heartbeat_window))
    if back:
        log.warning("jobs put back after their worker died", extra={"adaptation_id": ",".join(back)})
    top_up_tickets(scheduler)


def top_up_tickets(scheduler: Scheduler) -> None:
    """One ticket in the broker per pending job: sends those missing (lost with a dead worker or
    a restarted broker, or taken by a worker while the job's tenant was at its running limit)."""
    with app.connection_for_write() as conn:
        tickets = int(conn.default_channel.client.llen(QUEUE))
    for _ in range(max(0, scheduler.pending() - tickets)):
        app.send_task(TASK_NAME, args=[None], queue=QUEUE)


def sweep(store: Store, every: float) -> None:
    """One worker every `every` seconds: drop expired adaptations' ids from every tenant's
    indexes, so Redis returns to its size once TTLs pass even when no one lists or creates
    (which prune a tenant's too)."""
    if store.r.set("ra:sweeper", name_of_this_process(), nx=True, px=int(1000 * every)):
        store.prune_all()


def name_of_this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
