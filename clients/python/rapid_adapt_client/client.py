"""`Client` and `AsyncClient`: one set of methods (`_Methods`), each building a `Call` that
the sync or the async transport runs, with the same retry rule.

Retries: a call that may be repeated safely (reads, predictions, cancel, delete, and a
create, which always carries an Idempotency-Key) is retried on a connection error and on
503; a 429 rate_limited is retried by any call. The pause is the larger of the
service's Retry-After and an exponential backoff (0.5 s doubling, at most 10 s)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import RapidAdaptError
from .types import Adaptation, Event, Model, Page, Prediction

DONE = ("succeeded", "failed", "cancelled")


@dataclass
class Call:
    method: str
    path: str
    params: dict = field(default_factory=dict)
    json: Any = None
    headers: dict = field(default_factory=dict)
    idempotent: bool = True
    parse: Callable[[Any], Any] = lambda body: body
    raw: bool = False  # parse the body's bytes, not its JSON
    answers: tuple[int, ...] = ()  # error statuses whose body is the answer, not an error (/readyz's 503)


def _params(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _error(r: httpx.Response) -> RapidAdaptError:
    try:
        e = r.json()["error"]
    except Exception:
        e = {"code": "http_error", "message": r.text[:200] or r.reason_phrase, "details": []}
    after = r.headers.get("retry-after")
    retry_after = float(after) if after and after.replace(".", "", 1).isdigit() else None
    return RapidAdaptError(
        r.status_code, e.get("code", "http_error"), e.get("message", ""), e.get("details"), retry_after
    )


def _retryable(call: Call, exc: RapidAdaptError) -> bool:
    if exc.status == 429:
        return exc.code == "rate_limited"
    return call.idempotent and exc.status in (0, 503)


def _pause(attempt: int, exc: RapidAdaptError) -> float:
    backoff = min(0.5 * 2**attempt, 10.0) * (0.8 + 0.4 * random.random())
    return max(backoff, exc.retry_after or 0.0)


class _Methods:
    """The API's operations, written once. Each returns what `_run` returns: the parsed
    result for `Client`, an awaitable of it for `AsyncClient`."""

    transport_class: type = httpx.Client

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport=None,
    ):
        """The URL and key default to RAPID_ADAPT_URL and RAPID_ADAPT_API_KEY."""
        self.http = self.transport_class(**_config(base_url, api_key, timeout), transport=transport)
        self.max_retries = max_retries

    def _run(self, call: Call):
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """The service's readiness (GET /readyz, no key needed): `status` ready or not_ready, `redis`,
        `workers` alive, `bases` loaded."""
        return self._run(Call("GET", "/readyz", answers=(503,)))

    def models(self) -> list[Model]:
        return self._run(Call("GET", "/v1/models", parse=lambda b: b["data"]))

    def model(self, name: str) -> Model:
        return self._run(Call("GET", f"/v1/models/{name}"))

    def create_adaptation(
        self,
        model: str,
        support: list[dict],
        *,
        mode: str | None = None,
        steps: int | None = None,
        ttl_seconds: int | None = None,
        metadata: dict[str, str] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> Adaptation:
        """Queue an adaptation. It always carries an Idempotency-Key (a new one unless given),
        so a retry after a lost answer returns the same adaptation instead of a second one.
        `webhook_url` is called when the job ends (signed with your tenant's webhook secret)."""
        body = {"model": model, "support": support} | _params(
            mode=mode, steps=steps, ttl_seconds=ttl_seconds, metadata=metadata, webhook_url=webhook_url
        )
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}
        return self._run(Call("POST", "/v1/adaptations", _params(wait=wait), body, headers))

    def adaptation(self, adaptation_id: str, wait: float | None = None) -> Adaptation:
        return self._run(Call("GET", f"/v1/adaptations/{adaptation_id}", _params(wait=wait)))

    def adaptations(
        self, limit: int | None = None, after: str | None = None, metadata: dict[str, str] | None = None
    ) -> Page:
        """One page of your adaptations, newest first (`next_cursor` goes to `after`)."""
        params = _params(limit=limit, after=after) | {f"metadata[{k}]": v for k, v in (metadata or {}).items()}
        return self._run(Call("GET", "/v1/adaptations", params))

    def events(self, adaptation_id: str, limit: int | None = None, after: str | None = None) -> Page:
        return self._run(Call("GET", f"/v1/adaptations/{adaptation_id}/events", _params(limit=limit, after=after)))

    def cancel(self, adaptation_id: str) -> Adaptation:
        return self._run(Call("POST", f"/v1/adaptations/{adaptation_id}/cancel"))

    def delete(self, adaptation_id: str) -> None:
        return self._run(Call("DELETE", f"/v1/adaptations/{adaptation_id}"))

    def export(self, adaptation_id: str) -> bytes:
        """A succeeded adaptation as one safetensors file (its base included): save it, then
        `rapid_adapt_client.offline.load(path).predict(inputs)` answers as the service does."""
        return self._run(Call("GET", f"/v1/adaptations/{adaptation_id}/export", raw=True))

    def predict(self, adaptation_id: str, inputs: list, wait: float | None = None) -> list[Prediction]:
        path = f"/v1/adaptations/{adaptation_id}/predictions"
        return self._run(Call("POST", path, _params(wait=wait), {"inputs": inputs}, parse=lambda b: b["predictions"]))


class Client(_Methods):
    transport_class = httpx.Client

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.http.close()

    def _run(self, call: Call):
        for attempt in range(self.max_retries + 1):
            try:
                r = self.http.request(call.method, call.path, params=call.params, json=call.json, headers=call.headers)
            except httpx.TransportError as exc:
                r = exc
            result, err = _outcome(call, r)
            if err is None:
                return result
            if attempt == self.max_retries or not _retryable(call, err):
                raise err
            time.sleep(_pause(attempt, err))

    def wait(self, adaptation_id: str, timeout: float = 120.0, on_event=None) -> Adaptation:
        """Until the adaptation has succeeded, failed or been cancelled, or `timeout` passed
        (long-polls 30 s at a time); `on_event(event)` sees each new job event on the way."""
        deadline, seen = time.monotonic() + timeout, None
        while True:
            left = deadline - time.monotonic()
            a = self.adaptation(adaptation_id, wait=min(30.0, max(left, 0.0)) if on_event is None else min(1.0, left))
            if on_event is not None:
                seen = self._emit(adaptation_id, seen, on_event)
            if a["status"] in DONE or time.monotonic() >= deadline:
                return a

    def _emit(self, adaptation_id, after, on_event):
        for e in self.iter_events(adaptation_id, after=after):
            on_event(e)
            after = e["id"]
        return after

    def iter_adaptations(self, limit: int = 100, metadata: dict[str, str] | None = None) -> Iterator[Adaptation]:
        """Every adaptation of yours, newest first, page after page."""
        return _pages(lambda after: self.adaptations(limit=limit, after=after, metadata=metadata))

    def iter_events(self, adaptation_id: str, after: str | None = None) -> Iterator[Event]:
        """The job's events, oldest first, from after `after`."""
        return _pages(lambda cursor: self.events(adaptation_id, limit=100, after=cursor), after)

    def stream_events(self, adaptation_id: str, after: str | None = None) -> Iterator[Event]:
        """The job's events as they happen (server-sent events: one request, no polling), from
        after `after`, until its last one; a dropped stream resumes where it stopped."""
        while True:
            headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": after} if after else {})
            with self.http.stream("GET", f"/v1/adaptations/{adaptation_id}/events", headers=headers) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r)
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind not in (None, "gone", "error"):
                        event = json.loads(line[6:])
                        after = event["id"]
                        yield event
                        if kind in DONE:
                            return
                    elif line.startswith("data: "):
                        return  # gone (deleted or expired), or refused


class AsyncClient(_Methods):
    transport_class = httpx.AsyncClient

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _run(self, call: Call):
        for attempt in range(self.max_retries + 1):
            try:
                r = await self.http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=call.headers
                )
            except httpx.TransportError as exc:
                r = exc
            result, err = _outcome(call, r)
            if err is None:
                return result
            if attempt == self.max_retries or not _retryable(call, err):
                raise err
            await asyncio.sleep(_pause(attempt, err))

    async def wait(self, adaptation_id: str, timeout: float = 120.0) -> Adaptation:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            a = await self.adaptation(adaptation_id, wait=min(30.0, max(left, 0.0)))
            if a["status"] in DONE or time.monotonic() >= deadline:
                return a

    async def iter_adaptations(
        self, limit: int = 100, metadata: dict[str, str] | None = None
    ) -> AsyncIterator[Adaptation]:
        after = None
        while True:
            page = await self.adaptations(limit=limit, after=after, metadata=metadata)
            for a in page["data"]:
                yield a
            if not page["has_more"]:
                return
            after = page["next_cursor"]


def _pages(fetch, after: str | None = None) -> Iterator:
    """Every item of a paged listing: fetch(after) gives a page."""
    while True:
        page = fetch(after)
        yield from page["data"]
        if not page["has_more"]:
            return
        after = page["next_cursor"]


def _config(base_url: str | None, api_key: str | None, timeout: float) -> dict:
    base_url = base_url or os.environ.get("RAPID_ADAPT_URL", "http://127.0.0.1:8000")
    api_key = api_key if api_key is not None else os.environ.get("RAPID_ADAPT_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _outcome(call: Call, r: httpx.Response | httpx.TransportError) -> tuple[Any, RapidAdaptError | None]:
    """-> (the parsed result, None), or (None, the error): an error answer, or status 0 for
    a service that could not be reached."""
    if isinstance(r, httpx.TransportError):
        return None, RapidAdaptError(0, "unreachable", f"{type(r).__name__}: {r}")
    if r.status_code >= 400 and r.status_code not in call.answers:
        return None, _error(r)
    if call.raw:
        return call.parse(r.content), None
    return call.parse(None if r.status_code == 204 else r.json()), None
