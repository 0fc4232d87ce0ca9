"""The adaptation job queue: Celery's configuration, shared by the API (which
only sends) and the worker (which runs), and the one task name between them.
JSON serializer only; the message carries nothing but the adaptation id."""

from __future__ import annotations

from celery import Celery

from .config import Settings

TASK_NAME = "rapid_adapt.adapt"
QUEUE = "adaptations"


def make_celery(settings: Settings, name: str = "rapid_adapt") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    t = settings.redis_timeout_seconds
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_acks_late=True,  # ack after the job: a killed worker's job is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,  # > hard limit, see settings
            "unacked_restore_interval": settings.restore_interval_seconds,  # sweep for abandoned jobs
            "unacked_restore_throttle": 1,
            "socket_timeout": t,
            "socket_connect_timeout": t,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=t,
        task_publish_retry=False,  # broker down: fail fast, the API answers 503
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class Queue:
    """What the API needs of the queue: send a ticket for a new job (app/core/scheduler.py)."""

    def __init__(self, settings: Settings):
        self.celery = make_celery(settings, "rapid_adapt_api")

    def enqueue(self, adaptation_id: str) -> None:
        self.celery.send_task(TASK_NAME, args=[adaptation_id], queue=QUEUE, retry=False)
