"""Structured logs: one JSON object per line, per event, with the request and
adaptation ids where there are some (pass them with `extra={...}`), and the trace and
span ids inside a traced request or job (core/tracing.py)."""

from __future__ import annotations

import json
import logging
import sys
import time

from opentelemetry import trace

FIELDS = (
    "request_id",
    "adaptation_id",
    "tenant",
    "method",
    "route",
    "status",
    "duration_ms",
    "worker",
    "error",
    "task",
    "errors",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        event.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # inside a traced request or job
            event["trace_id"], event["span_id"] = format(span.trace_id, "032x"), format(span.span_id, "016x")
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for our loggers, uvicorn's and Celery's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.worker", "celery.app.trace"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the API logs one line per request itself
