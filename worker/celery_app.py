"""The Celery app: `celery -A worker.celery_app:app worker`. Its configuration lives in
app/core/jobs.py so the API sends exactly what the worker accepts; the tasks module is
named in `include` and imported by Celery, never by this module."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from celery import signals

from app.core import heartbeats
from app.core.adaptation import device, warm_up
from app.core.config import get_settings
from app.core.jobs import make_celery
from app.core.store import connect

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
    warm_up(device(), get_settings().torch_threads)


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    """A heartbeat in Redis every few seconds: /readyz counts the workers alive."""
    settings = get_settings()
    r = connect(settings.redis_url, settings)
    name = f"{sender.hostname if sender else socket.gethostname()}:{os.getpid()}"
    stop = threading.Event()

    def beat():
        while not stop.wait(settings.worker_heartbeat_seconds):
            with contextlib.suppress(Exception):  # Redis away: readiness will say so
                heartbeats.beat(r, name)

    heartbeats.beat(r, name)
    threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_):
        stop.set()
        with contextlib.suppress(Exception):
            heartbeats.forget(r, name)
