"""The one exception of the client: an error answer of the API, or a service that could
not be reached after the retries."""

from __future__ import annotations


class RapidAdaptError(Exception):
    """`status` (HTTP; 0 when the service could not be reached), `code` (the API's error
    code), `message`, `details` (the offending field, e.g. ["support", 3, "input"]) and
    `retry_after` (seconds, when the service said when to try again)."""

    def __init__(self, status: int, code: str, message: str, details: list | None = None, retry_after=None):
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.retry_after = retry_after
        where = f" at {self.field}" if self.details else ""
        super().__init__(f"{status} {code}: {message}{where}")

    @property
    def field(self) -> str:
        """The offending field as a path: support[3].input."""
        out = ""
        for part in self.details:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out
