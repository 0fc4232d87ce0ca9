"""Job ends, pushed: one Redis subscription per API process tells the requests waiting
with `?wait=` that their job ended, instead of each polling the record.

Whoever moves a job to a final status publishes its id on `keys.DONE` in the same script
(store.transition); a worker whose job succeeded sends the record it left with it, so the
waiting request answers without reading Redis again. Pub/sub keeps nothing for a subscriber
that was away, so a waiter also looks at the record once a second; a notice only makes the
answer come sooner and cheaper.

A waiter is an asyncio event on the event loop, not a thread: a thousand waiting requests
hold no thread of the pool the other routes run in. A tenant may hold at most
`max_waits_per_tenant` of them per process; one more is answered 429 at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator

import redis

from ..core import keys
from ..core.store import QuotaExceeded

log = logging.getLogger("rapid_adapt.api")


class Ended(asyncio.Event):
    """Set when a notice of the job's end arrives; `record` is the record it carried, if any."""

    def __init__(self):
        super().__init__()
        self.record: dict | None = None


class Notices:
    def __init__(self, r: redis.Redis, max_waits_per_tenant: int = 200):
        self.r, self.max_waits = r, max_waits_per_tenant
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, Ended]]] = {}
        self._per_tenant: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0  # notices of a job someone here waited for

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, name="notices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def waiting(self, tenant: str) -> int:
        return self._per_tenant[tenant]

    def admit(self, tenant: str) -> None:
        """QuotaExceeded when the tenant already has `max_waits` waits in this process."""
        if self._per_tenant[tenant] >= self.max_waits:
            raise QuotaExceeded("max_waits_per_tenant", self.max_waits, "requests waiting at once", 1)

    @contextlib.contextmanager
    def watch(self, aid: str, tenant: str) -> Iterator[Ended]:
        """An event set when a notice of `aid`'s end arrives; enter it before reading the record,
        so that an end between the read and the wait is not missed. Called on the event loop."""
        waiter = (asyncio.get_running_loop(), Ended())
        with self._lock:
            self.admit(tenant)
            self._per_tenant[tenant] += 1
            self._waiting.setdefault(aid, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                self._per_tenant[tenant] -= 1
                if not self._per_tenant[tenant]:
                    del self._per_tenant[tenant]
                waiters = self._waiting.get(aid, set())
                waiters.discard(waiter)
                if not waiters:
                    self._waiting.pop(aid, None)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.DONE)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        aid, _, sent = message["data"].decode().partition(" ")
                        with self._lock:
                            waiting = list(self._waiting.get(aid, ()))
                            self.received += bool(waiting)
                        record = json.loads(sent) if sent and waiting else None
                        for loop, ended in waiting:
                            ended.record = record
                            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                                loop.call_soon_threadsafe(ended.set)
            except (redis.RedisError, OSError) as exc:  # Redis away: waiters look at their records meanwhile
                log.warning("job notices unavailable", extra={"error": str(exc)})
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
