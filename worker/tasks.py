"""The adaptation job: support set from Redis -> `adapt` -> changed tensors to Redis.

Runs under late acks: if the worker dies mid-job the broker redelivers it and
another worker redoes it from the stored support set; since adaptation is
deterministic, a job done twice writes the same weights.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from celery.exceptions import SoftTimeLimitExceeded

from app.core import stats
from app.core.adaptation import device, run_adaptation
from app.core.config import get_settings
from app.core.jobs import TASK_NAME
from app.core.store import Store, event

from .celery_app import app

log = logging.getLogger("rapid_adapt.worker")
_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = Store(get_settings())
    return _store


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Stopped(Exception):
    """The adaptation was cancelled or deleted while running."""


@app.task(name=TASK_NAME)
def adapt_job(adaptation_id: str) -> str:
    s, settings = store(), get_settings()
    record = s.get(adaptation_id)
    if record is None:
        return "gone"  # deleted or expired before it ran
    if record["status"] == "succeeded" and s.weights(adaptation_id) is not None:
        return "duplicate"
    started = time.perf_counter()
    attempts = record.get("attempts", 0) + 1
    # queued, or running when a dead worker's job is redelivered; a cancelled job never runs
    if s.transition(
        adaptation_id, ("queued", "running"), status="running", started_at=now(), attempts=attempts
    ) not in (
        "queued",
        "running",
    ):
        return "skipped"
    s.add_events(adaptation_id, event("started", attempt=attempts))
    support = s.support(adaptation_id)
    if support is None:
        return "gone"

    def on_step(k: int, loss: float) -> None:
        if s.step(adaptation_id, event("step", step=k + 1, loss=round(loss, 6))) in (None, "cancelled"):
            raise Stopped

    try:
        fast, metrics = run_adaptation(record, support, device(), on_step=on_step)
    except Stopped:
        log.info("adaptation stopped", extra={"adaptation_id": adaptation_id, "status": "cancelled"})
        return "cancelled"
    except ValueError as exc:
        return fail(s, adaptation_id, started, "invalid_support", str(exc))
    except SoftTimeLimitExceeded:
        return fail(
            s, adaptation_id, started, "timeout", f"adaptation took longer than {settings.job_soft_time_limit}s"
        )
    metrics["weights_bytes"] = s.put_weights(adaptation_id, fast, s.ttl(adaptation_id))
    done = {"status": "succeeded", "finished_at": now(), "metrics": metrics, "steps": metrics["steps"]}
    if s.transition(adaptation_id, ("running",), **done) != "running":
        s.drop_weights(adaptation_id)  # cancelled or deleted meanwhile: leave nothing behind
        return "gone"
    s.add_events(adaptation_id, event("succeeded", mode=metrics["mode"], steps=metrics["steps"]))
    stats.record_outcome(s.r, "succeeded", time.perf_counter() - started)
    log.info(
        "adaptation succeeded",
        extra={"adaptation_id": adaptation_id, "status": "succeeded", "duration_ms": metrics["adaptation_ms"]},
    )
    return "succeeded"


def fail(s: Store, adaptation_id: str, started: float, code: str, message: str) -> str:
    fields = {"status": "failed", "finished_at": now(), "error": {"code": code, "message": message}}
    if s.transition(adaptation_id, ("running",), **fields) == "running":
        s.add_events(adaptation_id, event("failed", code=code))
        stats.record_outcome(s.r, "failed", time.perf_counter() - started)
    log.warning("adaptation failed", extra={"adaptation_id": adaptation_id, "status": "failed", "error": code})
    return "failed"
