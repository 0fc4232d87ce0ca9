"""The per-tenant admission of request bodies (app/api/fairness.py), driven as plain ASGI:
shares come back however a request ends, and a waiter past its time gets a 429."""

import asyncio
import json

from app.api.fairness import TenantGate


def scope(length: int) -> dict:
    return {"type": "http", "method": "POST", "headers": [(b"content-length", str(length).encode())]}


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


def test_a_tenants_line_admits_in_turn_and_forgets_those_who_leave():
    async def run():
        hold, sent = asyncio.Event(), []

        async def inner(scope, receive, send):
            await hold.wait()

        async def send(message):
            sent.append(message)

        gate = TenantGate(inner, None, budget=100, body_limit=1000, timeout=0.3)
        first = asyncio.create_task(gate(scope(80), no_body, send))
        await asyncio.sleep(0.01)
        share = gate.shares["public"]
        assert share.used == 80
        gone = asyncio.create_task(gate(scope(50), no_body, send))  # 80 + 50 > 100: waits
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while waiting
        await asyncio.gather(gone, return_exceptions=True)
        assert not share.line and share.used == 80
        await gate(scope(5000), no_body, send)  # waits 0.3 s, then refused
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])
        assert start["status"] == 429 and (b"retry-after", b"1") in start["headers"]
        assert body["error"]["details"] == ["tenant_inflight_bytes", 100]
        assert not share.line and share.used == 80
        hold.set()
        await first
        assert share.used == 0
        await gate(scope(5000), no_body, send)  # alone, a body over the share goes in
        assert share.used == 0

    asyncio.run(run())
