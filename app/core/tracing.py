"""OpenTelemetry traces: one trace from a request to the job on a worker and the store.

Off unless OTEL_TRACES_EXPORTER names an exporter (`otlp`, over HTTP, or `console`); the other
standard variables configure the rest (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT and
_HEADERS, OTEL_TRACES_SAMPLER and _ARG, OTEL_RESOURCE_ATTRIBUTES). Off, nothing is installed and a
span is the API's no-op. `setup` runs once per process, after a fork (the API's lifespan; each
Celery pool process's init), as batch exporters' threads do not survive one.

The job is not a Celery task: a ticket claims whichever job is next. So the request's context
travels in the adaptation's record (`trace`, a W3C traceparent, written at create) and the
worker starts the job's span as its child: a job retried, or put back by the reaper, stays in
the trace of the request that made it. Redis commands are spans of the redis instrumentation;
those with no parent (heartbeats, upkeep, the claim) are not traced, or background work would
make a trace a command. The trace id is in every log line written inside a span (logs.py) and in
the adaptation's `queued` event."""

from __future__ import annotations

import contextlib
import os

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

tracer = trace.get_tracer("rapid_adapt")
_installed: dict = {}  # the provider, once this process has one


def exporter_name() -> str:
    return os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()


def enabled() -> bool:
    return bool(_installed)


def setup(service: str, exporter=None) -> bool:
    """Trace this process, if OTEL_TRACES_EXPORTER (or `exporter`, a SpanExporter: tests) says
    so. -> whether it is traced. A second call adds `exporter` to the provider in place."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider, sampling
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        name = exporter_name()
        if name in ("", "none") or enabled():  # the environment's exporter is installed once a process
            return enabled()
        exporter = _exporter(name)
        processor = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(exporter)
    if not _installed:
        attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
        provider = TracerProvider(
            resource=Resource.create(attrs), sampler=NoOrphanClients(sampling._get_from_env_or_default())
        )
        trace.set_tracer_provider(provider)
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
        _installed["provider"] = provider
    _installed["provider"].add_span_processor(processor)
    return True


def _exporter(name: str):
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this service exports traces with otlp or console (or none)")


def instrument_app(app) -> None:
    """The FastAPI app's requests as server spans, when this process is traced."""
    if enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=_installed["provider"], excluded_urls="healthz,readyz,metrics"
        )


def flush() -> None:
    if enabled():
        _installed["provider"].force_flush()


class NoOrphanClients:
    """The sampler from the environment, except that a client span (a Redis command) with no
    parent is dropped: background work, not a request's."""

    def __init__(self, inner):
        self.inner = inner

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        if kind == SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClients({self.inner.get_description()})"


def carrier() -> dict[str, str]:
    """The current span's context, to travel with a job (empty when not traced)."""
    out: dict[str, str] = {}
    if enabled():
        propagate.inject(out)
    return out


def trace_id(carried: dict) -> str | None:
    """The trace id of a carried context (`carrier`); None when it carries none."""
    parts = carried.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else None


@contextlib.contextmanager
def job_span(record: dict, started_ns: int):
    """The job's span, a child of the request that created it (`record["trace"]`), begun when
    the worker began to start it."""
    if not enabled():
        yield None
        return
    ctx = propagate.extract(record.get("trace") or {})
    attrs = {"adaptation.id": record["id"], "tenant": record["tenant"], "model": record["model"]}
    attrs["attempt"] = record.get("attempts", 1)
    span = tracer.start_span("adaptation job", ctx, SpanKind.CONSUMER, attrs, start_time=started_ns)
    with trace.use_span(span, end_on_exit=True) as s:
        yield s


def current():
    """The current span's context (a request's), to link a shared pass to; None untraced."""
    return trace.get_current_span().get_span_context() if enabled() else None


def shared(name: str, contexts: list, **attributes):
    """A span for work done for several requests at once (a prediction pass), in a trace of its
    own, linked to each request's span: a trace shows which requests shared it."""
    if not enabled():
        return contextlib.nullcontext()
    links = [trace.Link(c) for c in contexts if c is not None and c.is_valid]
    return tracer.start_as_current_span(name, links=links, attributes=attributes)


def phase(name: str):
    """A span for one part of a job (models.adapt's `phase` hook, the store's writes)."""
    return tracer.start_as_current_span(name) if enabled() else contextlib.nullcontext()
