"""Request and response bodies of the v1 API (they make up the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Label = StrictInt | StrictStr
Status = Literal["queued", "running", "succeeded", "failed"]


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        description="base64 of a PNG or JPEG, any size, ink dark on light", examples=["iVBORw0KGgoAAAANSUhEUgAA..."]
    )


Input = ImageInput | list[Any]
INPUT_DOC = 'a nested numeric array of the base\'s input shape, or {"image": BASE64} for image bases'


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Input = Field(description=INPUT_DOC)
    label: Label | None = Field(None, description="classification: any JSON string or integer")
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
                        {"input": {"image": "iVBORw0KGgo..."}, "label": "alpha"},
                        {"input": {"image": "iVBORw0KGgo..."}, "label": "beta"},
                    ],
                },
            ]
        },
    )
    model: str = Field(description="a base from GET /v1/models")
    support: list[Example] = Field(description="the labelled examples of the new task")
    steps: int | None = Field(None, description="inner steps; default the base's default_steps")
    ttl_seconds: int | None = Field(None, description="how long the adaptation is kept")


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[Any] = []


class ErrorBody(BaseModel):
    error: ErrorInfo


class AdaptationMetrics(BaseModel):
    steps: int
    support_loss_before: float
    support_loss_after: float
    adaptation_ms: float
    stopped_early: bool = Field(
        False,
        description="the support loss blew up (data unlike the base's tasks): "
        "the weights with the lowest support loss were kept",
    )
    device: str
    weights_bytes: int


class Adaptation(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ad_5f0c3e...",
                    "status": "succeeded",
                    "model": "omniglot-conv4",
                    "classes": ["alpha", "beta"],
                    "steps": 10,
                    "created_at": "2026-11-27T12:00:00.000Z",
                    "expires_at": "2026-11-27T13:00:00.000Z",
                    "started_at": "2026-11-27T12:00:00.004Z",
                    "finished_at": "2026-11-27T12:00:00.020Z",
                    "error": None,
                    "metrics": {
                        "steps": 10,
                        "support_loss_before": 0.02,
                        "support_loss_after": 0.004,
                        "adaptation_ms": 9.1,
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
    classes: list[Label] | None = Field(None, description="classification: the labels, in the order first seen")
    steps: int
    created_at: str
    expires_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: ErrorInfo | None = None
    metrics: AdaptationMetrics | None = None


class AdaptationList(BaseModel):
    data: list[Adaptation]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page")


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": [[0.0], [1.5]]}]})
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
    range: list[float]
    encodings: list[str]
    preprocessing: str


class ModelInfo(BaseModel):
    name: str
    task: Literal["classification", "regression"]
    input: InputSpec
    max_ways: int | None
    default_steps: int
    max_steps: int
    algorithm: str
    adapted: list[str] | None = None
    metrics: dict[str, Any] | None = Field(None, description="meta-test figures with their protocol")


class ModelList(BaseModel):
    data: list[ModelInfo]
