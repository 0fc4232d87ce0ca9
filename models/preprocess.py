"""Image preprocessing shared by training data and served requests.

One function turns any PNG or JPEG into the tensor the Omniglot base was
trained on, so a drawing posted over HTTP is seen exactly as the training
drawings were: grayscale, padded to a square with background, box-resized to
28x28, inverted so that ink is 1.0 and paper 0.0.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

SIDE = 28
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """An image that cannot be decoded or is too large; `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def image_to_tensor(img: Image.Image, side: int = SIDE) -> torch.Tensor:
    """PIL image (any size, ink dark on light) -> float32 [1, side, side], ink = 1."""
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, img)
    img = img.convert("L")
    w, h = img.size
    if w != h:
        square = Image.new("L", (max(w, h),) * 2, 255)
        square.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        img = square
    img = img.resize((side, side), Image.Resampling.BOX)
    arr = 1.0 - np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)


def decode_image(data: bytes, max_pixels: int, side: int = SIDE) -> torch.Tensor:
    """PNG/JPEG bytes -> tensor as in training. Checks the pixel count from the
    header before decoding, so a decompression bomb is refused without being inflated."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError("image_too_large", "image is a decompression bomb") from None
    except Exception as exc:  # PIL raises many types for garbage
        raise ImageError("invalid_image", f"not a decodable image: {exc.__class__.__name__}") from None
    if img.format not in FORMATS:
        raise ImageError("invalid_image", f"image format {img.format} is not one of {', '.join(FORMATS)}")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError("image_too_large", f"image has {w}x{h}={w * h} pixels, more than the limit {max_pixels}")
    try:
        img.load()
    except Exception as exc:
        raise ImageError("invalid_image", f"image data is corrupt: {exc.__class__.__name__}") from None
    return image_to_tensor(img, side)
