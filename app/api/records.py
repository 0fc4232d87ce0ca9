"""Reading an adaptation's record for a caller, shared by the routes and the
predictor thread: ownership (another tenant's adaptation is 404, not 403), its
public form, and waiting for a job to end."""

from __future__ import annotations

import time
from datetime import datetime

from ..core.config import Settings
from ..core.store import Store
from .errors import invalid, not_found
from .schemas import Adaptation

DONE = ("succeeded", "failed")


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public(record: dict) -> dict:
    return Adaptation.model_validate(record).model_dump()


def owned(store: Store, aid: str, tenant: str) -> dict:
    record = store.get(aid)
    if record is None or record["tenant"] != tenant:
        raise not_found("adaptation")
    return record


def wait_param(settings: Settings, wait: float | None) -> float:
    if wait is not None and not 0 <= wait <= settings.max_wait_seconds:
        raise invalid("invalid_wait", f"wait must lie in 0..{settings.max_wait_seconds} seconds", "query", "wait")
    return wait or 0.0


def wait_for(store: Store, aid: str, seconds: float, record: dict) -> dict:
    """Poll the record until the job ends or the time runs out."""
    deadline, pause = time.monotonic() + seconds, 0.002
    while record["status"] not in DONE and time.monotonic() < deadline:
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.05)
        record = store.get(aid) or record
    return record
