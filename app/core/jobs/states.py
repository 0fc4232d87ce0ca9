"""The states an adaptation's job moves through, and who moves it on what evidence.

This table is the lifecycle: `Jobs.move` (lifecycle.py) refuses any move it does not
hold, docs/operations.md draws it, and tests/test_lifecycle.py walks every row. A move
is one compare-and-set on the record's status in Redis, so a cancel and a finishing
worker can race and exactly one of them wins."""

from __future__ import annotations

from typing import NamedTuple

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)  # a job in one of these never runs again
STATUSES = (QUEUED, RUNNING, *TERMINAL)  # what a record's status can say; expired records are gone


class Transition(NamedTuple):
    source: str
    target: str
    by: str  # who moves it
    evidence: str  # what it acts on
    within: str  # how soon after the evidence


TRANSITIONS = (
    Transition(
        QUEUED,
        RUNNING,
        "worker",
        "it claimed the job: the next of the next tenant in the rotation",
        "as soon as a worker is free",
    ),
    Transition(RUNNING, SUCCEEDED, "worker", "adapt returned and the weights are stored", "the job's run time"),
    Transition(
        RUNNING,
        FAILED,
        "worker",
        "adapt refused the support set, the base version is gone, the soft time limit passed, Redis refused a "
        "write, or an unexpected error on the last allowed try",
        "at once",
    ),
    Transition(
        RUNNING, QUEUED, "worker", "an unexpected error with tries left: back at the front of its line", "at once"
    ),
    Transition(
        RUNNING,
        QUEUED,
        "reaper",
        "its worker's heartbeat is older than the heartbeat window, or its own beat older than STALE_SECONDS; "
        "tries left",
        "the heartbeat window plus one reaper turn (about 10 s by default)",
    ),
    Transition(RUNNING, FAILED, "reaper", "the same, on the last allowed try (`job_max_attempts`)", "the same"),
    Transition(QUEUED, CANCELLED, "client", "POST /v1/adaptations/{id}/cancel: the job never runs", "at once"),
    Transition(RUNNING, CANCELLED, "client", "POST .../cancel: the worker stops at its next step", "at once"),
    *(
        Transition(s, EXPIRED, "redis", "the adaptation's TTL passed (DELETE does the same at once)", "its TTL")
        for s in STATUSES
    ),
    # swept: the sweeper drops expired ids from the tenant's indexes within `sweep_seconds`
)


def sources(target: str, by: str) -> tuple[str, ...]:
    """The statuses a job may be moved to `target` from, by `by`."""
    found = tuple(t.source for t in TRANSITIONS if t.target == target and t.by == by)
    if not found:
        raise ValueError(f"no transition to {target} by {by} in the lifecycle")
    return found
