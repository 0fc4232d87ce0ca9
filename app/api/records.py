"""Reading an adaptation's record for a caller, shared by the routes and the
predictor's lanes: ownership (another tenant's adaptation is 404, not 403), its
public form, and waiting for a job to end."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import re
import time
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from ..core.config import Settings
from ..core.jobs.states import TERMINAL
from ..core.store import Position, Store
from .errors import invalid, not_found
from .notices import Ended

DONE = TERMINAL
ID = re.compile(r"ad_[0-9a-f]{32}")
MAX_OFFSET = 10_000  # the legacy numeric cursor: further than this, page with next_cursor


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def owned(store: Store, aid: str, tenant: str) -> dict:
    record = store.get(tenant, aid) if ID.fullmatch(aid) else None
    if record is None or record["tenant"] != tenant:
        raise not_found("adaptation")
    return record


def wait_param(settings: Settings, wait: float | None) -> float:
    if wait is not None and not 0 <= wait <= settings.max_wait_seconds:
        raise invalid("invalid_wait", f"wait must lie in 0..{settings.max_wait_seconds} seconds", "query", "wait")
    return wait or 0.0


def encode_cursor(pos: Position) -> str:
    """An opaque cursor: where a page ended, as (created_ts, id)."""
    return base64.urlsafe_b64encode(f"{pos.score!r}|{pos.aid}".encode()).decode().rstrip("=")


def decode_cursor(text: str, field: str) -> Position | int:
    """A cursor from next_cursor -> Position, or a legacy numeric one (v1's offsets) -> int;
    anything else is a 422 naming the query field."""
    bad = invalid("invalid_cursor", f"{field} must be a value of next_cursor", "query", field)
    if text.isdecimal() and text.isascii():
        if int(text) > MAX_OFFSET:
            raise invalid("invalid_cursor", f"a numeric {field} may be at most {MAX_OFFSET}", "query", field)
        return int(text)
    try:
        score, _, aid = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition("|")
        pos = Position(float(score), aid)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not (math.isfinite(pos.score) and ID.fullmatch(pos.aid)):
        raise bad
    return pos


async def wait_for(store: Store, aid: str, seconds: float, record: dict, ended: Ended | None) -> dict:
    """The record once the job ends, or as it is when the time runs out. `ended` (notices.py,
    entered before `record` was read) is set when the job's end is published, with the record it
    left when the notice carried it; else the record is read, and also once a second, as a
    notice can be missed. Awaits on the event loop: the wait holds no thread, only each read
    does, briefly."""
    tenant, deadline = record["tenant"], time.monotonic() + seconds
    ended = ended or Ended()
    while record["status"] not in DONE and (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), min(left, 1.0))
        ended.clear()
        if ended.record is not None and ended.record.get("id") == aid:
            return ended.record
        record = await run_in_threadpool(store.get, tenant, aid) or record
    return record
