"""Webhooks: a POST to the URL an adaptation was created with when its job ends (succeeded,
failed or cancelled), signed with its tenant's secret as Standard Webhooks signs
(standardwebhooks.com: `webhook-id`, `webhook-timestamp`, `webhook-signature` headers), so
its libraries verify it.

A final status makes the webhook due in the very script that sets it (store._TRANSITION adds
the id to the tenant's ra:{T}:h), so no end goes untold. A worker's main process delivers
(`Deliverer`, a thread beside the upkeep), never the job: a slow receiver holds no job and no
worker slot. Any worker may deliver: a claim moves the due time a lease ahead, so one worker at
a time holds a webhook, and one that dies in the middle of a call leaves it due again when the
lease ends (at least once: `webhook-id` is the same on every attempt, for the receiver to drop
repeats). An attempt that does not get a 2xx within webhook_timeout_seconds is made again after
webhook_backoff_seconds, doubling, until webhook_max_attempts; the record's `webhook` field says
where it stands. The webhook of an adaptation deleted or expired before its call is dropped."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from . import keys
from .config import Settings, webhook_secrets
from .jobs.states import TERMINAL
from .store import Store

log = logging.getLogger("rapid_adapt.webhooks")
MAX_BACKOFF_SECONDS = 600.0

# KEYS: a tenant's webhooks due; ARGV: now, lease, most. -> the ids due by now (at most `most`),
# each now due again only after the lease: held by this caller.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), id) end
return due
"""


class Refused(ValueError):
    """A URL this service will not call: no attempt will change that."""


def check_url(url: str, allow_private: bool) -> str:
    """A client's webhook URL -> itself; Refused saying what is wrong. Unless allow_private, a
    literal address must be a public one (no loopback, private, link-local: the service's own
    network is not the client's to reach); a name is checked again when it is called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"a webhook URL starts with https:// (or http://), not {parts.scheme or 'nothing'}")
    if not parts.hostname:
        raise Refused("the webhook URL names no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("a webhook URL may not hold a user or password: the signature authenticates the call")
    try:
        _ = parts.port  # urlsplit checks it only when asked
    except ValueError:
        raise Refused("the webhook URL's port is not a number from 0 to 65535") from None
    host = parts.hostname
    if not allow_private:
        if host == "localhost" or host.endswith(".localhost"):
            raise Refused(f"{host} is this service's own machine: give an address reachable from the internet")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return url
        if not address.is_global:
            raise Refused(f"{host} is not a public address: give one reachable from the internet")
    return url


def check_resolved(url: str) -> None:
    """Refused when the URL's host name resolves to an address that is not public."""
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise Refused(f"{parts.hostname} resolves to {address}, not a public address")


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' `webhook-signature`: v1, base64 of HMAC-SHA256 over id.timestamp.body."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Deliverer:
    """Calls the webhooks due, every POLL seconds, from a thread of the worker's main process."""

    POLL = 0.5
    BATCH = 20  # webhooks one tenant's claim takes at most: a tenant with many waits a turn, not others

    def __init__(self, store: Store, settings: Settings, render: Callable[[dict], dict]):
        """render: a record -> its public form (what GET /v1/adaptations/{id} answers)."""
        self.store, self.settings, self.render = store, settings, render
        self.secrets = webhook_secrets(settings.webhook_secrets)
        self.http = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": "rapid-adapt-webhooks/1"},
        )
        self._claim = store.r.register_script(_CLAIM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        if self.secrets:  # else no tenant can ask for a webhook
            self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.http.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.POLL):
            try:
                self.turn()
            except Exception:  # Redis away: logged once a streak, and tried again
                if not self._failing:
                    log.exception("webhook delivery failed")
                self._failing = True
            else:
                self._failing = False

    def turn(self) -> int:
        """Call every webhook due now. -> the calls made."""
        lease = self.settings.webhook_timeout_seconds + 30
        made = 0
        for tenant in self.secrets:
            due = self._claim(keys=[keys.webhooks(tenant)], args=[time.time(), lease, self.BATCH])
            for aid in due:
                made += self.deliver(tenant, aid.decode()) != "dropped"
        return made

    def deliver(self, tenant: str, aid: str) -> str:
        """One attempt at one webhook. -> delivered, retrying, failed, or dropped (gone)."""
        due = keys.webhooks(tenant)
        record = self.store.get(tenant, aid)
        if record is None or record["status"] not in TERMINAL or not record.get("webhook_url"):
            self.store.r.zrem(due, aid)
            return "dropped"
        state = record.get("webhook") or {}
        attempts, now = state.get("attempts", 0) + 1, time.time()
        msg_id, status = f"{aid}.{record['status']}", record["status"]
        body = json.dumps({"type": f"adaptation.{status}", "timestamp": iso(now), "data": self.render(record)})
        error, final = self.call(record["webhook_url"], self.secrets[tenant], msg_id, body.encode())
        state = {"url": record["webhook_url"], "attempts": attempts, "last_attempt_at": iso(now), "last_error": error}
        if error is None:
            state |= {"status": "delivered", "delivered_at": iso(time.time())}
        elif final or attempts >= self.settings.webhook_max_attempts:
            state |= {"status": "failed"}
        else:
            wait = min(self.settings.webhook_backoff_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
            state |= {"status": "retrying", "next_attempt_at": iso(now + wait)}
        self.store.transition(tenant, aid, TERMINAL, webhook=state)
        if state["status"] == "retrying":
            self.store.r.zadd(due, {aid: now + wait})
        else:
            self.store.r.zrem(due, aid)
        level = logging.INFO if error is None else logging.WARNING
        log.log(level, "webhook " + state["status"], extra={"adaptation_id": aid, "tenant": tenant, "error": error})
        return state["status"]

    def call(self, url: str, secret: bytes, msg_id: str, body: bytes) -> tuple[str | None, bool]:
        """POST the signed body. -> (what went wrong or None, whether trying again is pointless)."""
        try:
            if not self.settings.webhook_allow_private:
                check_resolved(url)
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign(secret, msg_id, ts, body),
            }
            r = self.http.post(url, content=body, headers=headers)
        except Refused as exc:
            return str(exc), True
        except httpx.HTTPError as exc:
            return f"{exc.__class__.__name__}: {exc}"[:300], False
        if 200 <= r.status_code < 300:
            return None, False
        return f"the receiver answered {r.status_code}", False
