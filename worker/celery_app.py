"""The Celery app: `celery -A worker.celery_app:app worker`. Configuration lives
in app/jobs.py so the API sends exactly what the worker accepts."""

from __future__ import annotations

import os
import socket
import threading

from celery import signals

from app.jobs import make_celery
from app.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@signals.setup_logging.connect
def _logging(**_):
    """JSON lines instead of Celery's own log format."""
    from app.logs import configure

    configure()


@signals.worker_process_init.connect
def _init_process(**_):
    from . import tasks

    tasks.warm_up()


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    """A heartbeat in Redis every few seconds: /readyz counts the workers alive."""
    from app.store import Store

    settings = get_settings()
    store = Store(settings)
    name = f"{sender.hostname if sender else socket.gethostname()}:{os.getpid()}"

    def beat():
        while not stop.wait(settings.worker_heartbeat_seconds):
            try:
                store.heartbeat(name)
            except Exception:
                pass  # Redis away: readiness will say so

    stop = threading.Event()
    store.heartbeat(name)
    threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_):
        stop.set()
        try:
            store.forget_worker(name)
        except Exception:
            pass
