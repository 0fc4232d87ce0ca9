"""The app factory: settings, store and jobs wired into one FastAPI app, with the error
envelope, the middleware and the routes. What holds threads or memory (the bases'
registry, the predictor's lanes) starts in the app's lifespan and stops on shutdown."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio
import redis
import torch
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from models.registry import Registry

from ..core import logs, tracing
from ..core.adaptation import warm_up
from ..core.config import DEMO_KEY, Settings, get_settings, key_digest
from ..core.jobs import Jobs, Tickets, make_celery
from ..core.store import Store
from . import metrics, pages, routes
from .drain import Drain
from .errors import install_error_handlers
from .fairness import Refusals, TenantGate
from .middleware import Observe
from .notices import Notices
from .predictor import Predictor

log = logging.getLogger("rapid_adapt.api")

DESCRIPTION = (
    "Post a small labelled support set for a new task; a worker adapts a meta-trained base in a few learned "
    "gradient steps; ask for predictions on query data. Every error answers "
    '`{"error": {"code", "message", "details"}}`, details naming the offending field. '
    "Authorize with an API key (`Authorization: Bearer KEY`). The page to try it is at `/`."
)
TAGS = [
    {"name": "models", "description": "The meta-trained bases, their inputs, limits, versions and meta-test figures."},
    {"name": "adaptations", "description": "Adaptation jobs: create, list, get, cancel, follow, delete."},
    {"name": "predictions", "description": "Answers from an adaptation's weights."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


def package_version() -> str:
    try:
        return version("rapid-adapt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure()
    tenants = settings.tenants_by_key()
    if settings.auth == "on" and not tenants:
        raise RuntimeError("RAPID_ADAPT_API_KEYS is empty: set tenant:key pairs, or RAPID_ADAPT_AUTH=off explicitly")
    if key_digest(DEMO_KEY) in tenants:
        log.warning("the README's demo key is accepted (RAPID_ADAPT_ALLOW_DEMO_KEY=on): a quick start, not a service")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = 100
        registry = Registry(settings.models_dirs(), settings.models_poll_seconds)
        warm_up(registry, torch.device("cpu"), settings.torch_threads)  # every base in memory, before the first request
        app.state.registry = registry
        app.state.predictor = Predictor(settings, app.state.store, registry)
        app.state.predictor.start()
        app.state.notices = Notices(app.state.store.r, settings.max_waits_per_tenant)
        app.state.notices.start()
        try:
            app.state.store.migrate()
        except redis.RedisError as exc:  # readiness says so; a worker's upkeep migrates once Redis is back
            log.warning("store layout not checked: Redis unavailable", extra={"error": str(exc)})
        if settings.auth == "off":
            log.warning("RAPID_ADAPT_AUTH=off: every caller is tenant 'public'; never expose this service")
        try:
            yield
        finally:
            app.state.predictor.stop()
            app.state.notices.stop()
            del app.state.predictor, app.state.registry, app.state.notices

    app = FastAPI(
        title="Rapid Adapt",
        version=package_version(),
        lifespan=lifespan,
        description=DESCRIPTION,
        docs_url=None,  # served by pages.py from local assets
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operation ids: create_adaptation, ...
        openapi_tags=TAGS,
    )
    app.state.settings, app.state.tenants = settings, tenants
    app.state.store = Store(settings)
    app.state.jobs = Jobs(app.state.store, Tickets(make_celery(settings, "rapid_adapt_api")), settings)
    from_redis = CollectorRegistry()
    tenant_names = ["public"] if settings.auth == "off" else sorted(set(tenants.values()))
    from_redis.register(metrics.StoreCollector(app.state.jobs, settings.heartbeat_window, tenant_names))
    app.state.metrics_registries = [metrics.process_registry(), from_redis]
    routes.include(app)
    pages.include(app, settings)
    install_error_handlers(app)
    app.add_middleware(  # inside Observe, which logs and counts its refusals too
        TenantGate,
        tenants=None if settings.auth == "off" else tenants,
        budget=settings.tenant_inflight_bytes,
        body_limit=settings.max_body_bytes,
        timeout=settings.body_timeout_seconds,
        refusals=Refusals(app.state.store, settings),
    )
    app.add_middleware(
        Observe,
        limit=settings.max_body_bytes,
        body_timeout=settings.body_timeout_seconds,
        body_deadline=settings.body_deadline_seconds,
    )
    app.add_middleware(Drain)  # outermost: a draining process refuses before any work
    if tracing.setup("rapid-adapt-api"):  # OTEL_TRACES_EXPORTER set: requests are server spans
        tracing.instrument_app(app)
    return app
