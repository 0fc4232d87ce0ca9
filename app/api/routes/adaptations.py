"""/v1/adaptations: create (queue a job), list, get, delete."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Header, Query, Response

from .. import metrics
from ..bases import spec_of
from ..deps import PredictorDep, QueueDep, SettingsDep, StoreDep, TenantDep
from ..errors import ApiError, invalid
from ..inputs import support_tensors
from ..records import DONE, iso, owned, public, wait_for, wait_param
from ..schemas import Adaptation, AdaptationCreate, AdaptationList, ErrorBody

router = APIRouter(prefix="/v1", tags=["adaptations"])
WAIT = Query(None, description="hold the answer until the job ends, at most 30 s")


@router.post(
    "/adaptations",
    response_model=Adaptation,
    status_code=202,
    summary="Queue an adaptation",
    responses={
        200: {"model": Adaptation, "description": "?wait= and the job ended"},
        409: {"model": ErrorBody},
        413: {"model": ErrorBody},
    },
)
def create_adaptation(
    body: AdaptationCreate,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    wait: float | None = WAIT,
    idempotency_key: str | None = Header(None, max_length=200),
):
    wait = wait_param(settings, wait)
    spec = spec_of(body.model, ["model"])
    if not body.support:
        raise invalid("empty_support", "the support set is empty", "support")
    if len(body.support) > settings.max_support:
        raise invalid("too_many_examples", f"at most {settings.max_support} support examples", "support")
    steps = spec["default_steps"] if body.steps is None else body.steps
    if not 0 <= steps <= spec["max_steps"]:
        raise invalid("invalid_steps", f"steps must lie in 0..{spec['max_steps']}", "steps")
    ttl = settings.default_ttl_seconds if body.ttl_seconds is None else body.ttl_seconds
    if not 1 <= ttl <= settings.max_ttl_seconds:
        raise invalid("invalid_ttl", f"ttl_seconds must lie in 1..{settings.max_ttl_seconds}", "ttl_seconds")
    tensors, fields = support_tensors(body.support, spec, settings.max_image_pixels)
    now = datetime.now(timezone.utc)
    record = {
        "id": f"ad_{uuid.uuid4().hex}",
        "tenant": tenant,
        "model": body.model,
        "task": spec["task"],
        "status": "queued",
        "steps": steps,
        "ttl_seconds": ttl,
        "n_support": len(body.support),
        "created_at": iso(now),
        "created_ts": now.timestamp(),
        "expires_at": iso(now + timedelta(seconds=ttl)),
        "classes": None,
        "target_shape": None,
        **fields,
    }
    idem = None
    if idempotency_key:
        idem = (idempotency_key, hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest())
    try:
        aid, created = store.create(record, tensors, ttl, idem)
    except ValueError as exc:
        raise ApiError(409, "idempotency_conflict", str(exc), ["headers", "idempotency-key"]) from None
    if created:
        try:
            queue.enqueue(aid)
        except Exception:
            store.delete(record)
            raise
        metrics.ADAPTATIONS.labels(body.model).inc()
    response.headers["X-Adaptation-ID"] = aid
    if not created:  # an idempotent retry: answer with the stored adaptation
        record = store.get(aid) or record
    if wait:
        record = wait_for(store, aid, wait, record)
    if record["status"] in DONE:
        response.status_code = 200
    return public(record)


@router.get("/adaptations", response_model=AdaptationList, summary="The caller's adaptations, newest first")
def list_adaptations(
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    limit: int | None = Query(None, ge=1, le=100),
    cursor: str | None = Query(None),
):
    if cursor is not None and not cursor.isdigit():
        raise invalid("invalid_cursor", "cursor must be a value of next_cursor", "query", "cursor")
    offset, limit = int(cursor or 0), limit or settings.list_page_size
    records, more = store.list(tenant, offset, limit)
    return {"data": [public(r) for r in records], "next_cursor": str(offset + limit) if more else None}


@router.get("/adaptations/{aid}", response_model=Adaptation, summary="Status, timestamps, metrics")
def get_adaptation(aid: str, tenant: TenantDep, settings: SettingsDep, store: StoreDep, wait: float | None = WAIT):
    wait = wait_param(settings, wait)
    record = owned(store, aid, tenant)
    return public(wait_for(store, aid, wait, record) if wait else record)


@router.delete("/adaptations/{aid}", status_code=204, response_class=Response, summary="Delete all of it")
def delete_adaptation(aid: str, tenant: TenantDep, store: StoreDep, predictor: PredictorDep):
    store.delete(owned(store, aid, tenant))
    predictor.forget(aid)
    return Response(status_code=204)
