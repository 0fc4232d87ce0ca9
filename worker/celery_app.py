"""The Celery app: `celery -A worker.celery_app:app worker`. Its configuration lives in
app/core/jobs/tickets.py so the API sends exactly what the worker accepts; the tasks
module is named in `include` and imported by Celery, never by this module.

What a worker process holds, set up by Celery's signals: the bases (`Registry`, once per
pool process), and in the main process the upkeep thread (heartbeat, reaper, ticket
top-up, sweeper) and the webhook deliverer, started when the worker is ready and stopped
when it shuts down."""

from __future__ import annotations

import os
import secrets
import socket

from celery import signals

from app.core import tracing
from app.core.adaptation import device, warm_up
from app.core.config import get_settings
from app.core.jobs import Jobs, Tickets, make_celery
from app.core.jobs.lifecycle import name_of_this_process
from app.core.jobs.upkeep import Upkeep
from app.core.store import Store
from app.core.webhooks import Deliverer
from models.registry import Registry

from . import health

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]

# This start of the worker, in the names it holds jobs and beats by: two workers started without `-n`
# on one host, or containers on a host network (all have the host's name), share Celery's node name,
# and one's heartbeat would vouch for the other's jobs after it died. In the environment, so that its
# pool processes have the same however they are started.
INSTANCE = os.environ.setdefault("_RAPID_ADAPT_WORKER_INSTANCE", secrets.token_hex(4))


def worker_name(node: str) -> str:
    """The name this worker's heartbeat and jobs go by: its Celery node name and this start."""
    return f"{node}#{INSTANCE}"


class Held:
    """What this process serves from: set by the signals below, read by worker/tasks.py."""

    registry: Registry | None = None
    jobs: Jobs | None = None
    upkeep: Upkeep | None = None
    deliverer: Deliverer | None = None


def registry() -> Registry:
    if Held.registry is None:
        settings = get_settings()
        Held.registry = Registry(settings.models_dirs(), settings.models_poll_seconds)
    return Held.registry


def jobs() -> Jobs:
    if Held.jobs is None:
        settings = get_settings()
        Held.jobs = Jobs(Store(settings), Tickets(app), settings)
    return Held.jobs


@signals.setup_logging.connect
def _logging(**_):
    """JSON lines instead of Celery's own log format."""
    from app.core.logs import configure

    configure()


@signals.worker_process_init.connect
def _init_process(**_):
    """Every base loaded once per pool process, on the GPU when there is one; this process's own
    Redis connections (none inherited across the fork)."""
    Held.jobs = None
    tracing.setup("rapid-adapt-worker")  # after the fork: a batch exporter's thread does not survive one
    warm_up(registry(), device(), get_settings().torch_threads)


@signals.worker_ready.connect
def _start_upkeep(sender=None, **_):
    name = worker_name(sender.hostname if sender else f"celery@{socket.gethostname()}")  # as tasks claim by
    window = get_settings().heartbeat_window
    Held.upkeep = Upkeep(jobs(), name, f"{name_of_this_process()}#{INSTANCE}", on_beat=lambda: health.mark(window))
    Held.upkeep.start()
    from app.api.schemas import public  # a webhook's data is the record as GET shows it

    Held.deliverer = Deliverer(jobs().store, get_settings(), public)
    Held.deliverer.start()


@signals.worker_shutdown.connect
def _stop_upkeep(**_):
    if Held.upkeep is not None:
        Held.upkeep.stop()
        Held.upkeep = None
    if Held.deliverer is not None:
        Held.deliverer.stop()
        Held.deliverer = None
