"""Authentication and per-tenant admission of request bodies, before a byte of them is read.

A request to /v1/ without a known key is answered 401 here, from its headers: FastAPI
would read and parse the whole body before a route's dependencies check the key.

Parsing and decoding a body is most of the API's own work, so each API process lets a
tenant have at most `tenant_inflight_bytes` of request bodies (by Content-Length, an
unknown length counting as the body limit) in processing at once; its further requests
wait in line, costing nothing while their bodies sit in the socket, and past
`body_timeout_seconds` of waiting are answered 429. Small requests pass side by side (the
predictor still batches them); large ones of one tenant go one after another, so a flood
of them takes one tenant's share of the process, not the process. A route that goes on
to wait for a job (`?wait=`) hands its share back first (`done_reading`).

A request that will be refused anyway is refused from its headers too (`Refusals`): a tenant
over its prediction images this second, or, lately refused for a quota, still over it (a create
whose Idempotency-Key is stored goes on: a retry finds its adaptation). Under a
flood most of a tenant's requests are such refusals, and parsing each body first (500 drawings:
milliseconds of a core) was about a quarter of the API's CPU (docs/experiments.md). Its body is
read and dropped, unparsed, so the connection stays usable, and the answer waits for the next
whole second (when a rate's window turns): a client that sends again at once, as a flood does,
is held to a request a second per connection instead of costing the cores more refusals."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from types import SimpleNamespace

import redis
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..core.store import QuotaExceeded, StorageFull, Store
from .deps import tenant_of_key, unauthorized
from .errors import ApiError, over_quota, over_rate, storage_full


class Share:
    """One tenant's bytes in processing and its line of waiting requests (first come, first in)."""

    def __init__(self):
        self.used, self.line = 0, deque()


PREDICTIONS, PREDICTIONS_ROUTE = re.compile(r"/v1/adaptations/([^/]+)/predictions"), "/v1/adaptations/{aid}/predictions"


class Refusals:
    """What a POST will be answered from its tenant and path alone, before its body is parsed. A
    refusal names its route in `scope` as the router would, for the request's log line and metrics."""

    def __init__(self, store: Store, settings):
        self.store, self.settings = store, settings

    async def __call__(self, tenant: str, scope: dict, headers: dict) -> ApiError | None:
        path = scope["path"]
        if (match := PREDICTIONS.fullmatch(path)) and self.store.over_rate(tenant):  # no store read
            refused, route = over_rate(self.settings.tenant_predict_images_per_second), PREDICTIONS_ROUTE
            scope["path_params"] = {"aid": match[1]}
        elif path == "/v1/adaptations" and self.store.refused_lately(tenant):
            key = headers.get(b"idempotency-key", b"").decode("latin-1") or None
            refused, route = await self.quotas(tenant, key), path
        else:
            return None
        if refused is not None:
            scope["route"] = SimpleNamespace(path=route)  # as the router names it, for the log line and metrics
        return refused

    async def quotas(self, tenant: str, idempotency_key: str | None) -> ApiError | None:
        """The store's quotas read again (a freed place lets the create through, and so does a
        stored Idempotency-Key: a retry may find its adaptation)."""
        try:
            await run_in_threadpool(self.store.check_quotas, tenant, idempotency_key)
        except QuotaExceeded as exc:
            return over_quota(exc, self.settings, tenant)
        except StorageFull as exc:
            return storage_full(exc)
        except redis.RedisError:
            pass  # the route answers the store's trouble
        return None


async def drain(receive) -> None:
    """Read a request's body to its end, dropping it."""
    while (await receive()).get("more_body"):
        pass


class TenantGate:
    def __init__(
        self,
        inner,
        tenants: dict[str, str] | None,
        budget: int,
        body_limit: int,
        timeout: float,
        refusals: Refusals | None = None,
    ):
        """tenants None: auth is off and every caller is one tenant."""
        self.inner, self.tenants, self.budget = inner, tenants, budget
        self.body_limit, self.timeout, self.refusals = body_limit, timeout, refusals
        self.shares: dict[str, Share] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        bearer = scheme.lower() == "bearer" and key.strip()
        tenant = "public" if self.tenants is None else tenant_of_key(key, self.tenants) if bearer else None
        if tenant is None and scope["path"].startswith("/v1/"):
            refused = unauthorized("unknown API key" if bearer else "send Authorization: Bearer KEY")
            refused.headers = refused.headers | {"Connection": "close"}  # the body, if any, is never read
            return await refused.response()(scope, receive, send)
        if scope["method"] != "POST":
            return await self.inner(scope, receive, send)
        refused = tenant and self.refusals and await self.refusals(tenant, scope, headers)
        if refused:
            scope.setdefault("state", {})["tenant"] = tenant  # for the request log
            with contextlib.suppress(Exception):  # a body that breaks off: the answer goes all the same
                await drain(receive)
            await asyncio.sleep(1.0 - time.time() % 1.0)  # answered as the second turns (see above)
            return await refused.response()(scope, receive, send)
        if self.budget <= 0:
            return await self.inner(scope, receive, send)
        length = headers.get(b"content-length", b"")
        weight = min(int(length) if length.isdigit() else self.body_limit, self.budget)
        if tenant is None or weight == 0:  # outside /v1/ (no key needed) or no body: no work to admit
            return await self.inner(scope, receive, send)
        state = scope.setdefault("state", {})
        state["tenant"] = tenant  # for the request log, also when refused here
        share = self.shares.setdefault(tenant, Share())
        try:
            await self._enter(share, weight)
        except ApiError as refused:
            return await refused.response()(scope, receive, send)
        held, loop = [weight], asyncio.get_running_loop()

        def release():
            if held:
                self._leave(share, held.pop())

        state["release_share"] = lambda: loop.call_soon_threadsafe(release)
        try:
            await self.inner(scope, receive, send)
        finally:
            release()

    async def _enter(self, share: Share, weight: int) -> None:
        if not share.line and self._fits(share, weight):
            share.used += weight
            return
        turn = asyncio.get_running_loop().create_future()
        share.line.append((weight, turn))
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.timeout)
        except BaseException as exc:  # the time ran out, or the request was cancelled (client gone)
            timed_out = isinstance(exc, asyncio.TimeoutError)
            if turn.done():  # let in just as it ended
                if timed_out:
                    return  # take it
                self._leave(share, weight)
                raise
            share.line.remove((weight, turn))
            turn.cancel()
            self._admit(share)  # those behind it may fit now
            if not timed_out:
                raise
            raise ApiError(
                429,
                "rate_limited",
                f"this tenant's requests in processing held over {self.budget} bytes for "
                f"{self.timeout:g} s; send fewer at once",
                ["tenant_inflight_bytes", self.budget],
                {"Retry-After": "1", "Connection": "close"},  # the body was never read
            ) from None

    def _fits(self, share: Share, weight: int) -> bool:
        """Alone, any body goes in; beside others, only within the budget."""
        return share.used == 0 or share.used + weight <= self.budget

    def _leave(self, share: Share, weight: int) -> None:
        share.used -= weight
        self._admit(share)

    def _admit(self, share: Share) -> None:
        while share.line and self._fits(share, share.line[0][0]):
            weight, turn = share.line.popleft()
            share.used += weight
            turn.set_result(None)


def done_reading(request: Request) -> None:
    """From a route about to wait (for a job): its body is processed, the tenant's share goes
    back. Callable from the thread pool."""
    release = request.scope.get("state", {}).get("release_share")
    if release is not None:
        release()
