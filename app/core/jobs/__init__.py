"""Adaptation jobs, from creation to the end: the one room for their lifecycle.

  states.py      the states and the table of who moves a job, on what evidence
  lifecycle.py   `Jobs`: every move (submit, claim, start, step, succeed, fail, put back,
                 cancel, delete, reap, top up, sweep), and which Redis keys must agree
  scheduler.py   the fair order of claims: tenants in rotation, jobs in flight
  tickets.py     Celery's configuration and the tickets that wake workers
  heartbeats.py  which workers are alive
  upkeep.py      a worker's thread that beats, reaps, tops up and sweeps

The API calls `Jobs.submit/cancel/delete`; a worker's task calls `claim`, `start`,
`step`, `succeed`, `fail`, `crashed` and `release`; `Upkeep` calls the rest."""

from .lifecycle import Job, Jobs
from .states import TERMINAL, TRANSITIONS
from .tickets import QUEUE, TASK_NAME, Tickets, make_celery

__all__ = ["QUEUE", "TASK_NAME", "TERMINAL", "TRANSITIONS", "Job", "Jobs", "Tickets", "make_celery"]
