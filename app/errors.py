"""The one error shape of the API: {"error": {"code", "message", "details"}},
where details names the offending field, e.g. ["support", 3, "input"]."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid(code: str, message: str, *field) -> ApiError:
    return ApiError(422, code, message, list(field))


def not_found(what: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", [field] if field else [])


def unavailable(what: str) -> ApiError:
    return ApiError(503, "unavailable", f"{what} is unavailable; retry shortly", [], {"Retry-After": "1"})
