"""The v1 routes: thin, each validating, calling the store, queue or predictor."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import ORJSONResponse
from starlette.concurrency import run_in_threadpool

from models import registry

from . import deps, metrics
from .errors import ApiError, invalid
from .inputs import support_tensors
from .predictor import Predictor
from .records import DONE, owned, wait_for
from .schemas import (Adaptation, AdaptationCreate, AdaptationList, ErrorBody, ModelInfo, ModelList,
                      PredictionRequest, PredictionResponse)
from .settings import Settings
from .store import Store

router = APIRouter(prefix="/v1", default_response_class=ORJSONResponse, dependencies=[Depends(deps.tenant)], responses={
    401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}})


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def spec_of(name: str, field: list) -> dict:
    if name not in registry.names():
        raise ApiError(404, "unknown_model", f"no base named {name!r}; see GET /v1/models", field)
    return registry.load(name)[1]


def public(record: dict) -> dict:
    return Adaptation.model_validate(record).model_dump()


def wait_param(settings: Settings, wait: float | None) -> float:
    if wait is not None and not 0 <= wait <= settings.max_wait_seconds:
        raise invalid("invalid_wait", f"wait must lie in 0..{settings.max_wait_seconds} seconds", "query", "wait")
    return wait or 0.0


@router.get("/models", response_model=ModelList, summary="List the bases")
def list_models():
    return {"data": [registry.load(n)[1] for n in registry.names()]}


@router.get("/models/{name}", response_model=ModelInfo, summary="One base: input spec, limits, meta-test metrics")
def get_model(name: str):
    return spec_of(name, ["path", "name"])


@router.post("/adaptations", response_model=Adaptation, status_code=202, summary="Queue an adaptation",
             responses={200: {"model": Adaptation, "description": "?wait= and the job ended"},
                        409: {"model": ErrorBody}, 413: {"model": ErrorBody}})
def create_adaptation(
    body: AdaptationCreate, response: Response,
    wait: float | None = Query(None, description="hold the answer until the job ends, at most 30 s"),
    idempotency_key: str | None = Header(None, max_length=200),
    tenant: str = Depends(deps.tenant), settings: Settings = Depends(deps.settings),
    store: Store = Depends(deps.store), queue=Depends(deps.queue),
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
        "id": f"ad_{uuid.uuid4().hex}", "tenant": tenant, "model": body.model, "task": spec["task"],
        "status": "queued", "steps": steps, "ttl_seconds": ttl, "n_support": len(body.support),
        "created_at": iso(now), "created_ts": now.timestamp(), "expires_at": iso(now + timedelta(seconds=ttl)),
        "classes": None, "target_shape": None, **fields,
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
def list_adaptations(limit: int | None = Query(None, ge=1, le=100), cursor: str | None = Query(None),
                     tenant: str = Depends(deps.tenant), settings: Settings = Depends(deps.settings),
                     store: Store = Depends(deps.store)):
    if cursor is not None and not cursor.isdigit():
        raise invalid("invalid_cursor", "cursor must be a value of next_cursor", "query", "cursor")
    offset, limit = int(cursor or 0), limit or settings.list_page_size
    records, more = store.list(tenant, offset, limit)
    return {"data": [public(r) for r in records], "next_cursor": str(offset + limit) if more else None}


@router.get("/adaptations/{aid}", response_model=Adaptation, summary="Status, timestamps, metrics")
def get_adaptation(aid: str, wait: float | None = Query(None, description="hold until the job ends, at most 30 s"),
                   tenant: str = Depends(deps.tenant), settings: Settings = Depends(deps.settings),
                   store: Store = Depends(deps.store)):
    wait = wait_param(settings, wait)
    record = owned(store, aid, tenant)
    return public(wait_for(store, aid, wait, record) if wait else record)


@router.delete("/adaptations/{aid}", status_code=204, response_class=Response, summary="Delete all of it")
def delete_adaptation(aid: str, tenant: str = Depends(deps.tenant), store: Store = Depends(deps.store),
                      predictor=Depends(deps.predictor)):
    store.delete(owned(store, aid, tenant))
    predictor.forget(aid)
    return Response(status_code=204)


@router.post("/adaptations/{aid}/predictions", response_model=PredictionResponse, summary="Predict query inputs",
             responses={409: {"model": ErrorBody, "description": "the adaptation has not succeeded (yet)"}})
async def predict(aid: str, body: PredictionRequest,
                  wait: float | None = Query(None, description="wait for the adaptation to finish, at most 30 s"),
                  tenant: str = Depends(deps.tenant), settings: Settings = Depends(deps.settings),
                  store: Store = Depends(deps.store), predictor: Predictor = Depends(deps.predictor)):
    # async: the predictor thread reads the record, decodes and predicts; the event loop
    # only builds the response from plain lists (and waits for a running job in the thread pool)
    wait = wait_param(settings, wait)
    if not body.inputs:
        raise invalid("empty_inputs", "inputs is empty", "inputs")
    if len(body.inputs) > settings.max_query:
        raise invalid("too_many_inputs", f"at most {settings.max_query} inputs per request", "inputs")
    got = await predictor.predict(aid, tenant, body.inputs)
    if got.outputs is None and wait and got.record["status"] not in DONE:
        await run_in_threadpool(wait_for, store, aid, wait, got.record)
        got = await predictor.predict(aid, tenant, got.x)
    record = got.record
    if got.outputs is None:
        code = "adaptation_failed" if record["status"] == "failed" else "not_ready"
        raise ApiError(409, code, f"adaptation is {record['status']}", [record["status"]])
    if record["task"] == "classification":
        classes = record["classes"]
        keys = [str(c) for c in classes]
        return ORJSONResponse({"predictions": [{"label": classes[max(range(len(p)), key=p.__getitem__)],
                                                "scores": dict(zip(keys, p))} for p in got.outputs]})
    shaped = (lambda v: [v]) if record["target_shape"] == [1] else (lambda v: v)
    return ORJSONResponse({"predictions": [{"value": shaped(v)} for v in got.outputs]})  # built to the schema above
