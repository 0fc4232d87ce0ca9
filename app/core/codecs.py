"""Tensors to bytes and back for Redis: safetensors only, so nothing read from Redis
is ever unpickled."""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.preprocess import from_levels, to_levels


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def bytes_to_tensors(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


def support_to_bytes(support: dict[str, torch.Tensor]) -> bytes:
    """A support set {x, y}; images as their 8-bit gray levels {x_levels, y}, a quarter
    of the bytes, losslessly (`models.preprocess.to_levels`)."""
    levels = to_levels(support["x"])
    return tensors_to_bytes(support if levels is None else {"x_levels": levels, "y": support["y"]})


def bytes_to_support(data: bytes) -> dict[str, torch.Tensor]:
    t = bytes_to_tensors(data)
    return {"x": from_levels(t["x_levels"]), "y": t["y"]} if "x_levels" in t else t
