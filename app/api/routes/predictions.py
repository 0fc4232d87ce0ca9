"""POST /v1/adaptations/{id}/predictions: answers from the adapted weights."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Query, Request

from models.exported import predictions

from ..bodies import BoundedJSONRoute
from ..deps import NoticesDep, PredictorDep, SettingsDep, StoreDep, TenantDep
from ..errors import ApiError, invalid
from ..fairness import done_reading
from ..records import DONE, wait_for, wait_param
from ..responses import FastJSON
from ..schemas import ErrorBody, PredictionRequest, PredictionResponse

router = APIRouter(prefix="/v1", tags=["predictions"], route_class=BoundedJSONRoute)


@router.post(
    "/adaptations/{aid}/predictions",
    response_model=PredictionResponse,
    summary="Predict query inputs",
    responses={409: {"model": ErrorBody, "description": "the adaptation has not succeeded (yet)"}},
)
async def predict(
    aid: str,
    body: PredictionRequest,
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    predictor: PredictorDep,
    notices: NoticesDep,
    wait: float | None = Query(None, description="wait for the adaptation to finish, at most 30 s"),
):
    """async: a predictor lane's thread reads the record, decodes and predicts; the event loop
    only builds the response from plain lists (and awaits a running job's end)."""
    wait = wait_param(settings, wait)
    if not body.inputs:
        raise invalid("empty_inputs", "inputs is empty", "inputs")
    if len(body.inputs) > settings.max_query:
        raise invalid("too_many_inputs", f"at most {settings.max_query} inputs per request", "inputs")
    with notices.watch(aid, tenant) if wait else contextlib.nullcontext() as ended:
        got = await predictor.predict(aid, tenant, body.inputs)
        if got.outputs is None and wait and got.record["status"] not in DONE:
            done_reading(request)  # the inputs are decoded (got.x): the wait costs nothing
            await wait_for(store, aid, wait, got.record, ended)
            got = await predictor.predict(aid, tenant, got.x)
    record = got.record
    if got.outputs is None:
        code = {"failed": "adaptation_failed", "cancelled": "adaptation_cancelled"}.get(record["status"], "not_ready")
        message = f"adaptation is {record['status']}"
        if code == "not_ready":
            message += "; retry when it has succeeded, or send ?wait=SECONDS to wait for it in this request"
        raise ApiError(409, code, message, [record["status"]])
    # built to the schema above (as an export answers offline), without validating it again
    return FastJSON({"predictions": predictions(record, got.outputs)})
