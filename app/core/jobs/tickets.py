"""Tickets: the Celery messages that wake a worker to claim a job (scheduler.py).

Celery's configuration lives here, shared by the API (which only sends) and the
worker (which runs), with the one task name between them. JSON serializer only; a
ticket carries no adaptation id: which job runs is the scheduler's choice at claim
time, so any ticket serves any job and a lost one is simply sent again (`top_up`)."""

from __future__ import annotations

from celery import Celery

from ..config import Settings

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
            **({"master_name": settings.broker_master_name} if settings.broker_url.startswith("sentinel") else {}),
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=t,
        task_publish_retry=False,  # broker down: fail fast, the API answers 503
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class Tickets:
    """Send tickets and count those waiting in the broker."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            self.celery.send_task(TASK_NAME, queue=QUEUE, retry=False)

    def waiting(self) -> int:
        """Tickets in the broker, not yet taken by a worker (a queue declare's message count: kombu's
        public API; a passive one fails on Redis where no ticket is waiting)."""
        with self.celery.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue=QUEUE).message_count)

    def top_up(self, backlog: int) -> int:
        """One ticket in the broker per job in line: send those missing (lost with a dead worker or
        a restarted broker, or taken by a worker while the job's tenant was at its running limit).
        -> how many were sent."""
        missing = max(0, backlog - self.waiting())
        self.send(missing)
        return missing
