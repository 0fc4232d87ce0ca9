"""Request and response bodies of the v1 API (they make up the OpenAPI document)."""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

SAFE_INT = 2**53 - 1  # the integers every JSON client (JavaScript's too) reads exactly
Label = (
    Annotated[StrictInt, Field(ge=-SAFE_INT, le=SAFE_INT)] | Annotated[StrictStr, Field(min_length=1, max_length=200)]
)
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(
        max_length=16,
        description="up to 16 string pairs (keys 1-64 characters, values up to 512), 4 KiB of UTF-8 in all",
    ),
]


def example_png(horizontal: bool) -> str:
    """A real 28x28 PNG of one stroke, for examples that work when tried in /docs."""
    img = Image.new("L", (28, 28), 255)
    img.paste(0, (4, 12, 24, 16) if horizontal else (12, 4, 16, 24))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAR, DASH = example_png(False), example_png(True)


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        description="base64 of a PNG or JPEG (or a data:image/...;base64, URL), any size, ink dark on light",
        examples=["iVBORw0KGgoAAAANSUhEUgAA..."],
    )


Input = ImageInput | list[Any]
INPUT_DOC = 'a nested numeric array of the base\'s input shape, or {"image": BASE64} for image bases'


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Input = Field(description=INPUT_DOC)
    label: Label | None = Field(
        None, description="classification: a JSON string (1-200 characters) or an integer (|n| < 2^53)"
    )
    target: float | list[Any] | None = Field(None, description="regression: a number or numeric array")


class AdaptationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "sinusoid-mlp",
                    "steps": 10,
                    "ttl_seconds": 600,
                    "support": [
                        {"input": [-2.0], "target": 1.2},
                        {"input": [0.5], "target": -0.4},
                        {"input": [3.1], "target": 0.9},
                    ],
                },
                {
                    "model": "omniglot-conv4",
                    "support": [
                        {"input": {"image": BAR}, "label": "bar"},
                        {"input": {"image": DASH}, "label": "dash"},
                    ],
                    "metadata": {"source": "docs"},
                },
            ]
        },
    )
    model: str = Field(description="a base from GET /v1/models")
    support: list[Example] = Field(description="the labelled examples of the new task")
    steps: int | None = Field(
        None,
        description="inner steps of the mode that runs: 0 to that mode's max_steps (with auto, at most the smaller "
        "of the modes' max_steps); default the mode's default_steps",
    )
    mode: Literal["auto", "fast", "fine-tune"] = Field(
        "auto",
        description="fast: only the head adapts (milliseconds); fine-tune: the base's last block adapts too, on "
        "augmented copies of the support set (for tasks unlike the base's training data); auto: the service "
        "chooses from the support set",
    )
    ttl_seconds: int | None = Field(None, description="how long the adaptation is kept")
    metadata: Metadata | None = Field(None, description="your own string pairs, returned everywhere, filterable")
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="called (POST, signed with your tenant's webhook secret, Standard Webhooks) when the job ends; "
        "retried with backoff",
    )


ERROR_CODES = (
    # 401, 404, 405, 408, 409, 413
    "unauthorized", "not_found", "unknown_model", "method_not_allowed", "body_timeout", "not_ready",
    "adaptation_failed", "adaptation_cancelled", "adaptation_finished", "base_changed", "idempotency_conflict",
    "not_exportable",
    "body_too_large",
    # 422
    "invalid_request", "invalid_json", "invalid_shape", "invalid_input", "non_finite", "invalid_image",
    "image_too_large", "too_many_pixels", "missing_label", "missing_target", "unexpected_label", "unexpected_target",
    "invalid_target", "ambiguous_labels", "too_few_classes", "too_many_classes", "too_many_examples", "empty_support",
    "empty_inputs", "too_many_inputs", "invalid_steps", "invalid_ttl", "invalid_wait", "invalid_cursor",
    "metadata_too_large", "too_many_values",
    "invalid_filter", "invalid_webhook_url", "webhook_not_configured",
    # 429, 503, 507
    "quota_exceeded", "rate_limited", "unavailable", "timeout", "storage_full", "http_error",
)  # fmt: skip


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable", json_schema_extra={"enum": list(ERROR_CODES)})
    message: str = Field(description="for people")
    details: list[Any] = Field([], description='the offending field, e.g. ["support", 3, "input"]')


class ErrorBody(BaseModel):
    error: ErrorInfo


class YieldedTo(BaseModel):
    jobs: int
    ms: float


class AdaptationMetrics(BaseModel):
    mode: Literal["fast", "fine-tune"] = Field("fast", description="the inner loop that ran")
    steps: int
    support_loss_before: float
    support_loss_after: float
    loss_curve: list[float] = Field(
        [], description="support loss before each step and after the last (fine-tune: on the augmented copies)"
    )
    adaptation_ms: float
    stopped_early: bool = Field(
        False,
        description="the support loss blew up (data unlike the base's tasks): "
        "the weights with the lowest support loss were kept",
    )
    device: str
    weights_bytes: int
    cpu_priority: Literal["normal", "background"] = Field(
        "normal", description="background: the tenant had more jobs waiting, so this one yielded the CPU to others'"
    )
    batched: int | None = Field(
        None, description="adapted together with this many waiting jobs (adaptation_ms is the batch's)"
    )
    yielded: YieldedTo | None = Field(
        None, description="other tenants' jobs this one ran between its slices (adaptation_ms includes them)"
    )


class WebhookState(BaseModel):
    url: str
    status: Literal["delivered", "retrying", "failed"]
    attempts: int
    last_attempt_at: str
    last_error: str | None = Field(None, description="why the last attempt failed")
    delivered_at: str | None = None
    next_attempt_at: str | None = Field(None, description="while retrying")


class Adaptation(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ad_5f0c3e...",
                    "status": "succeeded",
                    "model": "omniglot-conv4",
                    "classes": ["alpha", "beta"],
                    "mode": "auto",
                    "steps": 20,
                    "created_at": "2026-11-27T12:00:00.000Z",
                    "expires_at": "2026-11-27T13:00:00.000Z",
                    "started_at": "2026-11-27T12:00:00.004Z",
                    "finished_at": "2026-11-27T12:00:00.020Z",
                    "error": None,
                    "metrics": {
                        "mode": "fine-tune",
                        "steps": 20,
                        "support_loss_before": 0.52,
                        "support_loss_after": 0.004,
                        "loss_curve": [0.52, 0.21, 0.004],
                        "adaptation_ms": 95.1,
                        "stopped_early": False,
                        "device": "cpu",
                        "weights_bytes": 832,
                    },
                }
            ]
        }
    )
    id: str
    status: Status
    model: str
    model_version: str | None = Field(None, description="the version of the base it was made from, and answers with")
    classes: list[Label] | None = Field(None, description="classification: the labels, in the order first seen")
    mode: Literal["auto", "fast", "fine-tune"] = Field("fast", description="as requested; metrics.mode says what ran")
    steps: int | None = Field(
        None, description="inner steps: as requested, else the mode's default; null while auto has not chosen"
    )
    metadata: dict[str, str] = Field({}, description="as given at creation")
    created_at: str
    expires_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = Field(0, description="times a worker started the job (more than 1: put back after an error)")
    error: ErrorInfo | None = None
    metrics: AdaptationMetrics | None = None
    webhook_url: str | None = None
    webhook: WebhookState | None = Field(None, description="the webhook's calls so far; null before the first")


def public(record: dict) -> dict:
    """A stored record as the API shows it (GET, listings, a webhook's data): JSON types only."""
    return Adaptation.model_validate(record).model_dump(mode="json")


class AdaptationList(BaseModel):
    data: list[Adaptation]
    has_more: bool = Field(False, description="whether another page follows")
    next_cursor: str | None = Field(
        None, description="opaque; pass as ?after= (or ?cursor=) for the next page; stable under inserts and deletes"
    )


class Event(BaseModel):
    id: str = Field(description="ev_N, N counting from the job's first event")
    type: Literal["queued", "started", "step", "requeued", "succeeded", "failed", "cancelled"]
    created_at: str
    data: dict[str, Any] | None = Field(
        None,
        description="started: {attempt}; step: {step, loss}; requeued: {reason}; succeeded: {mode, steps}; "
        "failed: {code}",
    )


class EventList(BaseModel):
    data: list[Event] = Field(description="oldest first")
    has_more: bool = False
    next_cursor: str | None = Field(None, description="pass as ?after= for the next page")


class PredictionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": [{"image": BAR}]}, {"inputs": [[0.0], [1.5]]}]}
    )
    inputs: list[Input] = Field(description=INPUT_DOC)


class ClassPrediction(BaseModel):
    label: Label
    scores: dict[str, float] = Field(description="probability per class, keyed by the label as a string")


class ValuePrediction(BaseModel):
    value: float | list[float]


class PredictionResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"predictions": [{"label": "alpha", "scores": {"alpha": 0.97, "beta": 0.03}}]},
                {"predictions": [{"value": 0.42}]},
            ]
        }
    )
    predictions: list[ClassPrediction] | list[ValuePrediction]


class InputSpec(BaseModel):
    kind: Literal["image", "vector"]
    shape: list[int]
    channels: int | None = Field(None, description="images: 1 (gray) or 3 (RGB)")
    range: list[float] | None = Field(None, description="the values the base expects; null: any finite number")
    encodings: list[str]
    preprocessing: str = Field(description="what the service does to a posted image, in words")
    preprocessing_kind: str = Field("none", description="its name, recorded with the base: ink-centred-v3, resize-v1")


class ModeSteps(BaseModel):
    default_steps: int
    max_steps: int


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="a content hash of the base's files; an adaptation keeps the one it was made from")
    task: Literal["classification", "regression"]
    input: InputSpec
    max_ways: int | None
    default_steps: int = Field(description="the fast mode's (as in v1)")
    max_steps: int = Field(description="the fast mode's (as in v1)")
    modes: dict[str, ModeSteps] = Field(description="steps of each mode: fast, fine-tune")
    algorithm: str
    use_for: str | None = Field(None, description="what the base is for, in words: which base to choose when")
    adapted: list[str] | None = None
    metrics: dict[str, Any] | None = Field(None, description="meta-test figures with their protocol")


class ModelList(BaseModel):
    data: list[ModelInfo]
