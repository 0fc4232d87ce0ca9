"""Turn request bodies into tensors, naming the offending field in every error."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import torch

from models.preprocess import ImageError, assemble, open_image, prepare, shrink

from .errors import invalid
from .schemas import Example, ImageInput


@dataclass(frozen=True)
class Limits:
    """How much image a request may make the service decode: pixels and sides per image,
    and pixels of all its images together (each checked from the headers, before decoding)."""

    pixels: int
    side: int
    request_pixels: int

    @classmethod
    def of(cls, settings) -> Limits:
        return cls(settings.max_image_pixels, settings.max_image_side, settings.max_request_pixels)


def batch(values: list, spec: dict, limits: Limits, fields: list[list]) -> torch.Tensor:
    """Inputs -> [B, *shape], fields[i] naming values[i] in errors. Each image is brought to its
    small form right after it is decoded (16 RGBA 2000x2000 PNGs never sit in memory at once at
    64 MB each); then they are framed together (`frame_ink` finds all their windows in one pass)."""
    used = 0

    def budget(field):
        def take(w: int, h: int) -> None:
            nonlocal used
            used += w * h
            if used > limits.request_pixels:
                raise invalid(
                    "too_many_pixels",
                    f"the images of this request have more than {limits.request_pixels} pixels together",
                    *field,
                    "image",
                )

        return take

    if all(isinstance(v, ImageInput) for v in values):  # each shrunk as soon as it is decoded
        prep, shape = {"kind": spec["input"]["preprocessing_kind"]}, spec["input"]["shape"]
        small = [shrink(image_of(v, spec, limits, f, budget(f)), prep, shape) for v, f in zip(values, fields)]
        return assemble(small, prep, shape)
    return torch.stack([to_tensor(v, spec, limits, f, budget(f)) for v, f in zip(values, fields)])


def to_tensor(value, spec: dict, limits: Limits, field: list, take=None) -> torch.Tensor:
    shape = spec["input"]["shape"]
    if isinstance(value, ImageInput):
        image = image_of(value, spec, limits, field, take)
        return prepare([image], {"kind": spec["input"]["preprocessing_kind"]}, spec["input"]["shape"])[0]
    try:
        t = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise invalid("invalid_input", f"input must be a numeric array of shape {shape}", *field) from None
    if list(t.shape) != shape:
        raise invalid("invalid_shape", f"input has shape {list(t.shape)}, expected {shape}", *field)
    if not torch.isfinite(t).all():
        raise invalid("non_finite", "input contains NaN or infinite values", *field)
    return t


def image_of(value: ImageInput, spec: dict, limits: Limits, field: list, take=None):
    """A posted image, decoded within the limits (a 422 naming its field otherwise)."""
    if spec["input"]["kind"] != "image":
        raise invalid(
            "invalid_input",
            f"{spec['name']} takes numeric arrays of shape {spec['input']['shape']}, not images",
            *field,
        )
    text = value.image
    if text.startswith("data:"):  # a data URL, as a browser's canvas.toDataURL() makes it
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            message = "a data URL image must be base64 (data:image/png;base64,...)"
            raise invalid("invalid_image", message, *field, "image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        message = "image is not valid base64: send the PNG or JPEG bytes in base64, or a data:image/...;base64, URL"
        raise invalid("invalid_image", message, *field, "image") from None
    try:
        return open_image(data, limits.pixels, limits.side, take)
    except ImageError as exc:
        raise invalid(exc.code, str(exc), *field, "image") from None


def support_tensors(support: list[Example], spec: dict, limits: Limits) -> tuple[dict, dict]:
    """-> ({x, y} tensors, record fields: classes or target_shape)."""
    x = batch([e.input for e in support], spec, limits, [["support", i, "input"] for i in range(len(support))])
    if spec["task"] == "classification":
        classes: list = []
        index: dict = {}
        ys = []
        for i, e in enumerate(support):
            if e.label is None:
                raise invalid("missing_label", "a classification example needs a label", "support", i, "label")
            if e.target is not None:
                raise invalid(
                    "unexpected_target", "a classification example takes a label, not a target", "support", i, "target"
                )
            key = str(e.label)  # scores are keyed by this string
            if key not in index:
                index[key] = len(classes)
                classes.append(e.label)
            elif classes[index[key]] != e.label or type(classes[index[key]]) is not type(e.label):
                raise invalid(
                    "ambiguous_labels",
                    f"labels {classes[index[key]]!r} and {e.label!r} would share the "
                    f"score key {key!r}; use one or the other",
                    "support",
                    i,
                    "label",
                )
            ys.append(index[key])
        if len(classes) < 2:
            raise invalid("too_few_classes", "the support set needs at least 2 different labels", "support")
        if len(classes) > spec["max_ways"]:
            raise invalid(
                "too_many_classes", f"{len(classes)} classes, more than max_ways {spec['max_ways']}", "support"
            )
        return {"x": x, "y": torch.tensor(ys)}, {"classes": classes}
    targets, shape = [], None
    for i, e in enumerate(support):
        if e.target is None:
            raise invalid("missing_target", "a regression example needs a target", "support", i, "target")
        if e.label is not None:
            raise invalid("unexpected_label", "a regression example takes a target, not a label", "support", i, "label")
        try:
            t = torch.tensor(e.target, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise invalid(
                "invalid_target", "target must be a number or a numeric array", "support", i, "target"
            ) from None
        if t.numel() != 1:
            raise invalid(
                "invalid_shape",
                f"{spec['name']} predicts one value: target must be a number or [v]",
                "support",
                i,
                "target",
            )
        if shape is not None and list(t.shape) != shape:
            raise invalid(
                "invalid_shape",
                f"target shape {list(t.shape)} differs from the first one {shape}",
                "support",
                i,
                "target",
            )
        if not torch.isfinite(t).all():
            raise invalid("non_finite", "target is NaN or infinite", "support", i, "target")
        shape = list(t.shape)
        targets.append(t.reshape(1))
    return {"x": x, "y": torch.stack(targets)}, {"target_shape": shape}
