"""Reading an adaptation's record for a caller, shared by the routes and the
predictor thread: ownership (another tenant's adaptation is 404, not 403) and
waiting for a job to end."""

from __future__ import annotations

import time

from .errors import not_found
from .store import Store

DONE = ("succeeded", "failed")


def owned(store: Store, aid: str, tenant: str) -> dict:
    record = store.get(aid)
    if record is None or record["tenant"] != tenant:
        raise not_found("adaptation")
    return record


def wait_for(store: Store, aid: str, seconds: float, record: dict) -> dict:
    """Poll the record until the job ends or the time runs out."""
    deadline, pause = time.monotonic() + seconds, 0.002
    while record["status"] not in DONE and time.monotonic() < deadline:
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.05)
        record = store.get(aid) or record
    return record
