"""/v1/adaptations: create (queue a job), list, get, delete, cancel, its events, its export."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from models import exported
from models.registry import Registry

from ...core import priority, tracing
from ...core.config import Settings, webhook_secrets
from ...core.jobs import Jobs
from ...core.jobs.lifecycle import FLUSH_SECONDS
from ...core.store import QuotaExceeded, Store
from ...core.webhooks import Refused, check_url
from .. import metrics
from ..bases import base_of, spec_of
from ..bodies import BoundedJSONRoute
from ..deps import JobsDep, NoticesDep, PredictorDep, RegistryDep, SettingsDep, StoreDep, TenantDep
from ..errors import ApiError, invalid
from ..fairness import done_reading
from ..inputs import Limits, support_tensors
from ..records import DONE, decode_cursor, encode_cursor, iso, owned, wait_for, wait_param
from ..schemas import Adaptation, AdaptationCreate, AdaptationList, ErrorBody, Event, EventList, public

router = APIRouter(prefix="/v1", tags=["adaptations"], route_class=BoundedJSONRoute)
QUEUED = {
    "id": "ad_5f0c3e9a1b2c4d5e6f708192a3b4c5d6",
    "status": "queued",
    "model": "omniglot-conv4",
    "model_version": "3f2a9c0d1e4b5a67",
    "classes": ["bar", "dash"],
    "mode": "auto",
    "steps": None,
    "metadata": {"source": "docs"},
    "created_at": "2026-12-03T12:00:00.000Z",
    "expires_at": "2026-12-03T13:00:00.000Z",
}
WAIT = Query(None, description="hold the answer until the job ends, at most 30 s")


@router.post(
    "/adaptations",
    response_model=Adaptation,
    status_code=202,
    summary="Queue an adaptation",
    responses={
        200: {"model": Adaptation, "description": "?wait= and the job ended"},
        202: {"description": "queued", "content": {"application/json": {"example": QUEUED}}},
        409: {"model": ErrorBody},
        413: {"model": ErrorBody},
        429: {"model": ErrorBody, "description": "quota_exceeded, naming the limit; Retry-After"},
        507: {"model": ErrorBody, "description": "storage_full; Retry-After"},
    },
)
async def create_adaptation(
    body: AdaptationCreate,
    request: Request,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobsDep,
    registry: RegistryDep,
    notices: NoticesDep,
    wait: float | None = WAIT,
    idempotency_key: str | None = Header(None, max_length=200),
):
    """Checks, decodes and queues in one hop to the thread pool (a support set larger than one
    pass: to threads at background CPU priority, as the predictor's bulk lane, so that one
    tenant's large uploads leave the cores to others' small requests); a ?wait= then awaits
    the job's end on the event loop, holding no thread."""
    wait = wait_param(settings, wait)
    aid = f"ad_{uuid.uuid4().hex}"
    with notices.watch(aid, tenant) if wait else contextlib.nullcontext() as ended:  # before its job can end
        args = (aid, body, tenant, settings, store, jobs, registry, idempotency_key)
        if len(body.support) > settings.predict_max_batch and settings.background_nice:  # decoded in background
            pool, run = priority.background_threads(settings.background_nice), contextvars.copy_context().run
            record = await asyncio.get_running_loop().run_in_executor(pool, run, create, *args)
        else:
            record = await run_in_threadpool(create, *args)
        response.headers["X-Adaptation-ID"] = record["id"]
        if wait:  # an idempotent retry's adaptation has another id: its wait looks once a second
            done_reading(request)
            record = await wait_for(store, record["id"], wait, record, ended if record["id"] == aid else None)
    if record["status"] in DONE:
        response.status_code = 200
    return public(record)


def create(
    aid: str,
    body: AdaptationCreate,
    tenant: str,
    settings: Settings,
    store: Store,
    jobs: Jobs,
    registry: Registry,
    idempotency_key: str | None,
) -> dict:
    """The request's adaptation record, queued as `aid`; or, for an idempotent retry, the one
    stored before."""
    spec = spec_of(registry, body.model, ["model"])
    size = sum(len(k.encode()) + len(v.encode()) for k, v in (body.metadata or {}).items())
    if size > settings.max_metadata_bytes:
        message = f"metadata holds {size} bytes of UTF-8, at most {settings.max_metadata_bytes}"
        raise invalid("metadata_too_large", message, "metadata")
    if not body.support:
        raise invalid("empty_support", "the support set is empty", "support")
    if len(body.support) > settings.max_support:
        raise invalid("too_many_examples", f"at most {settings.max_support} support examples", "support")
    modes = spec["modes"] if body.mode == "auto" else {body.mode: spec["modes"][body.mode]}
    max_steps = min(m["max_steps"] for m in modes.values())
    if body.steps is not None and not 0 <= body.steps <= max_steps:
        raise invalid("invalid_steps", f"steps must lie in 0..{max_steps} for mode {body.mode}", "steps")
    steps = modes[body.mode]["default_steps"] if body.steps is None and body.mode != "auto" else body.steps
    ttl = settings.default_ttl_seconds if body.ttl_seconds is None else body.ttl_seconds
    if not 1 <= ttl <= settings.max_ttl_seconds:
        raise invalid("invalid_ttl", f"ttl_seconds must lie in 1..{settings.max_ttl_seconds}", "ttl_seconds")
    if body.webhook_url is not None:
        check_webhook(body.webhook_url, tenant, settings)
    store.check_quotas(tenant, idempotency_key)  # over its quota, a tenant costs no decoding
    tensors, fields = support_tensors(body.support, spec, Limits.of(settings))
    now = datetime.now(timezone.utc)
    record = {
        "id": aid,
        "tenant": tenant,
        "model": body.model,
        "model_version": spec["version"],
        "task": spec["task"],
        "status": "queued",
        "mode": body.mode,
        "steps": steps,
        "ttl_seconds": ttl,
        "metadata": body.metadata or {},
        "n_support": len(body.support),
        "created_at": iso(now),
        "created_ts": now.timestamp(),
        "expires_at": iso(now + timedelta(seconds=ttl)),
        "classes": None,
        "target_shape": None,
        **fields,
    }
    if body.webhook_url is not None:
        record["webhook_url"] = body.webhook_url
    if carried := tracing.carrier():  # the request's trace, for the job's span to join (core/tracing.py)
        record["trace"] = carried
    idem = None
    if idempotency_key:
        idem = (idempotency_key, hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest())
    try:
        stored, created = jobs.submit(record, tensors, ttl, idem)
    except ValueError as exc:
        raise ApiError(409, "idempotency_conflict", str(exc), ["headers", "idempotency-key"]) from None
    if created:
        metrics.ADAPTATIONS.labels(body.model).inc()
        return record
    return store.get(tenant, stored) or {**record, "id": stored}


def check_webhook(url: str, tenant: str, settings: Settings) -> None:
    """A webhook the service can sign and may call, or a 422 naming webhook_url."""
    if tenant not in webhook_secrets(settings.webhook_secrets):
        message = (
            f"tenant {tenant!r} has no webhook secret to sign calls with: the operator sets one in "
            "RAPID_ADAPT_WEBHOOK_SECRETS (tenant:secret), or follow the job with ?wait= or the events stream"
        )
        raise invalid("webhook_not_configured", message, "webhook_url")
    try:
        check_url(url, settings.webhook_allow_private)
    except Refused as exc:
        raise invalid("invalid_webhook_url", str(exc), "webhook_url") from None


@router.get(
    "/adaptations",
    response_model=AdaptationList,
    summary="The caller's adaptations, newest first",
    description="Keyset pagination: pass next_cursor as ?after= for the next page (?cursor= as in v1 works "
    "too). Filter with ?metadata[KEY]=VALUE, repeated for several keys: the first pair's index is walked. A "
    "request reads at most LIST_MAX_SCAN adaptations: a filter of several pairs that match few together can "
    "answer a short page (even an empty one) with has_more and a next_cursor to go on from.",
)
def list_adaptations(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    limit: int | None = Query(None, ge=1, le=100),
    after: str | None = Query(None, max_length=200, description="next_cursor of the previous page"),
    cursor: str | None = Query(None, max_length=200, description="v1's name for after"),
):
    field, token = ("after", after) if after is not None else ("cursor", cursor)
    start = decode_cursor(token, field) if token else None
    limit = limit or settings.list_page_size
    wanted = metadata_filters(request)
    scan = settings.list_max_scan
    if isinstance(start, int):  # v1's numeric cursor: an offset
        records, following = store.page(tenant, start + limit, None, wanted, scan)
        records = records[start:]
    else:
        records, following = store.page(tenant, limit, start, wanted, scan)
    return {
        "data": [public(r) for r in records],
        "has_more": following is not None,
        "next_cursor": encode_cursor(following) if following is not None else None,
    }


def metadata_filters(request: Request) -> dict[str, str]:
    """?metadata[KEY]=VALUE pairs of the query string."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata["):
            if not name.endswith("]") or len(name) == len("metadata[]"):
                raise invalid("invalid_filter", "filter by metadata as ?metadata[KEY]=VALUE", "query", name)
            found[name[len("metadata[") : -1]] = value
    return found


@router.get("/adaptations/{aid}", response_model=Adaptation, summary="Status, timestamps, metrics")
async def get_adaptation(
    aid: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, notices: NoticesDep, wait: float | None = WAIT
):
    wait = wait_param(settings, wait)
    with notices.watch(aid, tenant) if wait else contextlib.nullcontext() as ended:
        record = await run_in_threadpool(owned, store, aid, tenant)
        return public(await wait_for(store, aid, wait, record, ended) if wait else record)


@router.delete("/adaptations/{aid}", status_code=204, response_class=Response, summary="Delete all of it")
def delete_adaptation(aid: str, tenant: TenantDep, store: StoreDep, jobs: JobsDep, predictor: PredictorDep):
    jobs.delete(owned(store, aid, tenant))
    predictor.forget(aid)
    return Response(status_code=204)


@router.post(
    "/adaptations/{aid}/cancel",
    response_model=Adaptation,
    summary="Cancel a queued or running job",
    description="A queued job never runs; a running one stops at its next step. Cancelling a cancelled job "
    "answers it again; a finished one is 409 adaptation_finished.",
    responses={409: {"model": ErrorBody}},
)
def cancel_adaptation(aid: str, tenant: TenantDep, store: StoreDep, jobs: JobsDep):
    record = owned(store, aid, tenant)
    had = jobs.cancel(record)
    if had in ("succeeded", "failed"):
        raise ApiError(409, "adaptation_finished", f"adaptation already {had}", [had])
    return public(owned(store, aid, tenant))


@router.get(
    "/adaptations/{aid}/events",
    response_model=EventList,
    summary="The job's events, oldest first",
    description="queued, started, one per step (its loss), then succeeded, failed or cancelled. With `Accept: "
    "text/event-stream`, a stream of server-sent events instead (`id: ev_N`, `event:` its type, `data:` the event), "
    "from ?after= or Last-Event-ID, that ends after the job's last event (or after MAX_STREAM_SECONDS: reconnect "
    "with Last-Event-ID).",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def list_events(
    aid: str,
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    notices: NoticesDep,
    limit: int | None = Query(None, ge=1, le=100),
    after: str | None = Query(None, max_length=40, description="next_cursor of the previous page"),
    last_event_id: str | None = Header(None, max_length=40),
):
    await run_in_threadpool(owned, store, aid, tenant)
    streaming = "text/event-stream" in request.headers.get("accept", "")
    start = event_index(after if after is not None else (last_event_id if streaming else None))
    if streaming:
        notices.admit(tenant)  # refused here, as a 429, rather than inside the stream
        stream = event_stream(store, notices, settings, aid, tenant, start)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    items, more = await run_in_threadpool(store.events, tenant, aid, start, limit or settings.list_page_size)
    return {"data": items, "has_more": more, "next_cursor": items[-1]["id"] if more else None}


def event_index(cursor: str | None) -> int:
    """The index after an event id ev_N (0 without one); anything else is a 422."""
    if cursor is None:
        return 0
    if not (cursor.startswith("ev_") and cursor[3:].isdecimal() and cursor[3:].isascii() and len(cursor) < 12):
        raise invalid("invalid_cursor", "after (or Last-Event-ID) must be an event id, ev_N", "query", "after")
    return int(cursor[3:]) + 1


KEEP_ALIVE_SECONDS = 15.0


async def event_stream(store: Store, notices, settings: Settings, aid: str, tenant: str, start: int):
    """Server-sent events: what is stored from `start`, then each new event as a running job's steps
    reach Redis (every FLUSH_SECONDS) and its end (told by the job's notice), until its last event.
    A stream is one of the tenant's waits (notices.py): it holds no thread between reads."""
    deadline, quiet = time.monotonic() + settings.max_stream_seconds, time.monotonic()
    try:
        with notices.watch(aid, tenant) as ended:
            while True:
                items, _ = await run_in_threadpool(store.events, tenant, aid, start, 1000)
                for e in items:
                    data = json.dumps(Event.model_validate(e).model_dump())  # as the JSON listing has it
                    yield f"id: {e['id']}\nevent: {e['type']}\ndata: {data}\n\n"
                start, quiet = start + len(items), (time.monotonic() if items else quiet)
                if items and items[-1]["type"] in DONE:
                    return
                if not items and await run_in_threadpool(store.status, tenant, aid) is None:
                    yield "event: gone\ndata: {}\n\n"  # deleted, or its TTL passed
                    return
                if time.monotonic() > deadline:
                    return
                if time.monotonic() - quiet > KEEP_ALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), FLUSH_SECONDS)
                ended.clear()
    except QuotaExceeded as exc:
        yield f"event: error\ndata: {json.dumps({'code': 'quota_exceeded', 'message': str(exc)})}\n\n"


@router.get(
    "/adaptations/{aid}/export",
    response_class=Response,
    summary="Download it, to predict elsewhere",
    description="One safetensors file: the base's weights (`base/...`), the adapted tensors (`adapted/...`), and in "
    "its metadata the base's JSON and the adaptation's record. `rapid_adapt_client.offline.load(path).predict(inputs)` "
    "answers from it as the service does, offline (it needs torch and the rapid-adapt package's models).",
    responses={200: {"content": {"application/octet-stream": {}}}, 409: {"model": ErrorBody}},
)
def export_adaptation(aid: str, tenant: TenantDep, store: StoreDep, registry: RegistryDep, predictor: PredictorDep):
    record = owned(store, aid, tenant)
    if record["status"] != "succeeded":
        message = f"adaptation is {record['status']}: only a succeeded one exports"
        raise ApiError(409, "not_ready", message, [record["status"]])
    model, meta = base_of(registry, record, checkpoint=True)
    if meta["architecture"] == "backbone":  # its program is the operator's file, not this export's
        message = f"{record['model']} is a backbone base: its exported program is not in an adaptation's export"
        raise ApiError(409, "not_exportable", message, ["model"])
    stored = predictor.cached(record) or predictor.rebuild(record).result(timeout=120)
    data = exported.export(model, meta, record, stored)
    disposition = f'attachment; filename="{aid}.safetensors"'
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": disposition})
