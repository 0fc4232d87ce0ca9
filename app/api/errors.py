"""The one error shape of the API, {"error": {"code", "message", "details"}}, where
details names the offending field (["support", 3, "input"]), and the handlers that
turn every failure into it."""

from __future__ import annotations

import logging
import re

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.store import QuotaExceeded, StorageFull
from . import metrics
from .responses import FastJSON

log = logging.getLogger("rapid_adapt.api")
# a member of a union in a validation error's location, e.g. ["support", 0, "label", "constrained-int"]
UNION_MEMBER = re.compile(r"constrained-\w+|ImageInput|list\[.*\]|float|int|str")
# what a field of a union takes, said in one message instead of the first member's complaint
FORMS = {
    "label": "a JSON string of 1-200 characters or an integer (a number such as 2.0 or 1.5 is neither)",
    "input": 'a nested numeric array of the base\'s input shape, or {"image": BASE64} for image bases',
    "target": "a number or a nested numeric array",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def response(self) -> FastJSON:
        return FastJSON(self.body(), status_code=self.status, headers=self.headers)


class BodyRefused(StarletteHTTPException):
    """A body over the size limit, or that stalled: raised while FastAPI reads it. As a
    Starlette HTTPException it passes FastAPI's body parsing, which would turn anything
    else into a 400; the handler below answers it with its own error."""

    def __init__(self, error: ApiError):
        super().__init__(error.status, error.message)
        self.error = error


def invalid(code: str, message: str, *field) -> ApiError:
    return ApiError(422, code, message, list(field))


def over_quota(exc: QuotaExceeded, settings, tenant: str | None) -> ApiError:
    """A tenant over one of its quotas of stored adaptations, jobs or bytes: 429 naming the limit,
    counted in rapid_adapt_quota_refusals_total wherever it is answered."""
    metrics.QUOTA_REFUSALS.labels(metrics.tenant_label(settings, tenant), exc.limit).inc()
    message = f"over this tenant's limit of {exc.value} {exc}"
    return ApiError(429, "quota_exceeded", message, [exc.limit, exc.value], {"Retry-After": str(exc.retry_after)})


def over_rate(limit: int) -> ApiError:
    """A tenant over its prediction images per second: 429 naming the limit."""
    message = f"over this tenant's limit of {limit} prediction images per second"
    return ApiError(429, "rate_limited", message, ["tenant_predict_images_per_second", limit], {"Retry-After": "1"})


def storage_full(exc: StorageFull) -> ApiError:
    return ApiError(507, "storage_full", str(exc), [], {"Retry-After": "30"})


def not_found(what: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", [field] if field else [])


def unavailable(what: str) -> ApiError:
    return ApiError(503, "unavailable", f"{what} is unavailable; retry shortly", [], {"Retry-After": "1"})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = list(first["loc"])
        union = [p for p in loc if isinstance(p, str) and UNION_MEMBER.fullmatch(p)]  # pydantic names the forms tried
        loc = [p for p in loc if p not in union]
        field = loc[1:] if loc and loc[0] == "body" else loc
        code = "invalid_json" if first["type"] == "json_invalid" else "invalid_request"
        name = next((p for p in reversed(field) if isinstance(p, str)), None)
        said = f"must be {FORMS[name]}" if union and name in FORMS else first["msg"]
        message = f"{'.'.join(map(str, field)) or 'body'}: {said}"
        kind = request.headers.get("content-type", "")
        if not field and first["type"] != "json_invalid" and "json" not in kind:
            message += f"; send the body as JSON (Content-Type: application/json), not {kind or 'untyped'}"
        return invalid(code, message, *field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        if isinstance(exc, BodyRefused):
            return exc.error.response()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, code, str(exc.detail), [], exc.headers).response()

    @app.exception_handler(QuotaExceeded)
    async def quota_exceeded(request: Request, exc: QuotaExceeded):
        return over_quota(exc, request.app.state.settings, getattr(request.state, "tenant", None)).response()

    @app.exception_handler(StorageFull)
    async def store_full(_, exc: StorageFull):
        return storage_full(exc).response()

    @app.exception_handler(redis.RedisError)
    async def redis_down(_, exc):
        log.warning("redis unavailable: %s", exc)
        return unavailable("storage").response()

    @app.exception_handler(OperationalError)
    async def broker_down(_, exc):
        log.warning("broker unavailable: %s", exc)
        return unavailable("the job queue").response()

    @app.exception_handler(TimeoutError)
    async def timed_out(_, exc):
        return ApiError(503, "timeout", "the service is overloaded; retry shortly", [], {"Retry-After": "1"}).response()
