"""Job ends, pushed: one Redis subscription per API process tells the requests waiting
with `?wait=` that their job ended, instead of each polling the record.

Whoever moves a job to a final status publishes its id on `keys.DONE` in the same script
(store.transition). Pub/sub keeps nothing for a subscriber that was away, so a waiter also
looks at the record once a second; a notice only makes the answer come sooner and cheaper."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis

from ..core import keys

log = logging.getLogger("rapid_adapt.api")


class Notices:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._waiting: dict[str, set[threading.Event]] = {}
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

    @contextlib.contextmanager
    def watch(self, aid: str) -> Iterator[threading.Event]:
        """An event set when a notice of `aid`'s end arrives; register before reading the record,
        so that an end between the read and the wait is not missed."""
        ended = threading.Event()
        with self._lock:
            self._waiting.setdefault(aid, set()).add(ended)
        try:
            yield ended
        finally:
            with self._lock:
                events = self._waiting.get(aid, set())
                events.discard(ended)
                if not events:
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
                        with self._lock:
                            waiting = self._waiting.get(message["data"].decode(), ())
                            self.received += bool(waiting)
                            for ended in waiting:
                                ended.set()
            except (redis.RedisError, OSError) as exc:  # Redis away: waiters look at their records meanwhile
                log.warning("job notices unavailable", extra={"error": str(exc)})
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
