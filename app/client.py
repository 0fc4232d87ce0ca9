"""A typed Python client for the v1 API, sync (`Client`) and async (`AsyncClient`).

from app.client import Client, image_input
with Client("http://127.0.0.1:8000", api_key="demo-key") as c:
    a = c.create_adaptation("omniglot-conv4", [{"input": image_input(png), "label": "a"}, ...], wait=10)
    print(c.predict(a["id"], [image_input(q)])[0]["label"])
"""

from __future__ import annotations

import base64
import time
from typing import Any, TypedDict

import httpx


class RapidAdaptError(Exception):
    """An error answer of the API: HTTP status, error code, message and field."""

    def __init__(self, status: int, code: str, message: str, details: list):
        super().__init__(f"{status} {code}: {message} {details or ''}".strip())
        self.status, self.code, self.message, self.details = status, code, message, details


class Adaptation(TypedDict, total=False):
    id: str
    status: str
    model: str
    classes: list | None
    steps: int
    created_at: str
    expires_at: str
    started_at: str | None
    finished_at: str | None
    error: dict | None
    metrics: dict | None


def image_input(png_or_jpeg: bytes) -> dict:
    """An INPUT for image bases from the bytes of a PNG or JPEG."""
    return {"image": base64.b64encode(png_or_jpeg).decode()}


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            e = r.json()["error"]
        except Exception:
            e = {"code": "http_error", "message": r.text[:200], "details": []}
        raise RapidAdaptError(r.status_code, e["code"], e["message"], e.get("details", []))
    return None if r.status_code == 204 else r.json()


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _create_args(model, support, steps, ttl_seconds, wait, idempotency_key):
    body = {"model": model, "support": support}
    if steps is not None:
        body["steps"] = steps
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    params = {"wait": wait} if wait else {}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return body, params, headers


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.http.close()

    def models(self) -> list[dict]:
        return _check(self.http.get("/v1/models"))["data"]

    def model(self, name: str) -> dict:
        return _check(self.http.get(f"/v1/models/{name}"))

    def create_adaptation(
        self,
        model: str,
        support: list[dict],
        steps: int | None = None,
        ttl_seconds: int | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Adaptation:
        body, params, headers = _create_args(model, support, steps, ttl_seconds, wait, idempotency_key)
        return _check(self.http.post("/v1/adaptations", json=body, params=params, headers=headers))

    def adaptation(self, adaptation_id: str, wait: float | None = None) -> Adaptation:
        return _check(self.http.get(f"/v1/adaptations/{adaptation_id}", params={"wait": wait} if wait else {}))

    def adaptations(self, limit: int | None = None, cursor: str | None = None) -> dict:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return _check(self.http.get("/v1/adaptations", params=params))

    def wait(self, adaptation_id: str, timeout: float = 60.0) -> Adaptation:
        """Until the adaptation has succeeded or failed (long-polls 30 s at a time)."""
        deadline = time.monotonic() + timeout
        while True:
            a = self.adaptation(adaptation_id, wait=min(30.0, max(deadline - time.monotonic(), 0.1)))
            if a["status"] in ("succeeded", "failed") or time.monotonic() >= deadline:
                return a

    def delete(self, adaptation_id: str) -> None:
        _check(self.http.delete(f"/v1/adaptations/{adaptation_id}"))

    def predict(self, adaptation_id: str, inputs: list, wait: float | None = None) -> list[dict]:
        return _check(
            self.http.post(
                f"/v1/adaptations/{adaptation_id}/predictions",
                json={"inputs": inputs},
                params={"wait": wait} if wait else {},
            )
        )["predictions"]

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200


class AsyncClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def models(self) -> list[dict]:
        return _check(await self.http.get("/v1/models"))["data"]

    async def model(self, name: str) -> dict:
        return _check(await self.http.get(f"/v1/models/{name}"))

    async def create_adaptation(
        self,
        model: str,
        support: list[dict],
        steps: int | None = None,
        ttl_seconds: int | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Adaptation:
        body, params, headers = _create_args(model, support, steps, ttl_seconds, wait, idempotency_key)
        return _check(await self.http.post("/v1/adaptations", json=body, params=params, headers=headers))

    async def adaptation(self, adaptation_id: str, wait: float | None = None) -> Adaptation:
        return _check(await self.http.get(f"/v1/adaptations/{adaptation_id}", params={"wait": wait} if wait else {}))

    async def adaptations(self, limit: int | None = None, cursor: str | None = None) -> dict:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return _check(await self.http.get("/v1/adaptations", params=params))

    async def delete(self, adaptation_id: str) -> None:
        _check(await self.http.delete(f"/v1/adaptations/{adaptation_id}"))

    async def predict(self, adaptation_id: str, inputs: list, wait: float | None = None) -> list[dict]:
        r = await self.http.post(
            f"/v1/adaptations/{adaptation_id}/predictions",
            json={"inputs": inputs},
            params={"wait": wait} if wait else {},
        )
        return _check(r)["predictions"]
