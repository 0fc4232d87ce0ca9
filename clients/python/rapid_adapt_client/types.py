"""Typed results: the API's JSON objects as TypedDicts (plain dicts at run time)."""

from __future__ import annotations

from typing import Any, TypedDict


class Model(TypedDict, total=False):
    name: str
    task: str  # "classification" | "regression"
    input: dict[str, Any]  # kind, shape, range, encodings, preprocessing
    max_ways: int | None
    default_steps: int
    max_steps: int
    modes: dict[str, dict[str, int]]
    algorithm: str
    metrics: dict[str, Any] | None


class Adaptation(TypedDict, total=False):
    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    model: str
    classes: list | None
    mode: str
    steps: int | None
    metadata: dict[str, str]
    created_at: str
    expires_at: str
    started_at: str | None
    finished_at: str | None
    error: dict | None
    metrics: dict[str, Any] | None
    webhook_url: str | None
    webhook: dict[str, Any] | None  # the webhook's calls: status delivered | retrying | failed, attempts, last_error


class Prediction(TypedDict, total=False):
    label: Any  # classification: the label, with its JSON type
    scores: dict[str, float]
    value: float | list[float]  # regression


class Event(TypedDict, total=False):
    id: str
    type: str  # queued | started | step | succeeded | failed | cancelled
    created_at: str
    data: dict[str, Any] | None


class Page(TypedDict):
    data: list
    has_more: bool
    next_cursor: str | None
