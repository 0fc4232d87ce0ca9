"""Image preprocessing shared by training data and served requests.

One function turns any PNG or JPEG into the tensor the Omniglot base was
trained on, so a drawing posted over HTTP is seen exactly as the training
drawings were: grayscale with ink dark, brought to Omniglot's 105-pixel canvas
and padded to a square with paper, a window centred on the ink cut out and
reduced to 28x28, inverted so that ink is 1.0 and paper 0.0.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from . import png

SIDE = 28
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """An image that cannot be decoded or is too large; `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def square_gray(img: Image.Image) -> np.ndarray:
    """PIL image (any size and mode) -> [CANVAS, CANVAS] uint8 gray levels with ink dark on light
    (an image whose frame is mostly dark, light ink on a dark ground, is inverted), its longer side
    brought to CANVAS pixels (box filter) and padded with paper to a square. Resizing before
    padding keeps memory to the image's own size: a 1x40,000 strip is never made square. A drawing
    already on the canvas is read out once and never goes back to PIL."""
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, img)
    gray = levels(img if img.mode == "L" else img.convert("L"))
    if dark_frame(gray):
        gray = 255 - gray
    h, w = gray.shape
    if w == h == CANVAS:
        return gray
    img = Image.fromarray(gray)
    if max(w, h) != CANVAS:
        scale = CANVAS / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((w, h), Image.Resampling.BOX)
    if w != h:
        square = Image.new("L", (CANVAS, CANVAS), 255)
        square.paste(img, ((CANVAS - w) // 2, (CANVAS - h) // 2))
        img = square
    return levels(img)


def levels(img: Image.Image) -> np.ndarray:
    """A gray PIL image -> its [h, w] uint8 levels (read-only: they share the bytes PIL gave)."""
    return np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width)


def dark_frame(gray: np.ndarray) -> bool:
    """Whether most of the outermost row and column pixels of [h, w] gray levels are dark: their
    median below 128, found with one partial sort (np.median's own overhead was a fifth of a served
    image's decoding)."""
    frame = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    k = len(frame) // 2
    if len(frame) % 2:
        return bool(np.partition(frame, k)[k] < 128)
    low = np.partition(frame, [k - 1, k])
    return int(low[k - 1]) + int(low[k]) < 256  # the mean of the two middle values, below 128


# in every image base's JSON: a base only serves images prepared as it was trained. v3 is v2 plus light-on-dark
# images inverted and large images reduced before padding: identical on every Omniglot drawing (tested)
PREPROCESSING = "ink-centred-v3"
CANVAS = 105  # Omniglot's drawing canvas: every drawing is brought to it first, as its training drawings came
REDUCE = 4  # the window is averaged over REDUCE x REDUCE blocks down to SIDE x SIDE
WINDOW = REDUCE * SIDE  # the window cut around the ink: characters 6% smaller than 105 -> 28
CHUNK = 256  # drawings whose ink is measured together: numpy's per-call cost is paid once per chunk


def frame_ink(squares: list) -> list[bytes]:
    """Square gray drawings (`square_gray`'s [CANVAS, CANVAS] levels, or such PIL images) ->
    SIDE*SIDE gray levels each: on the 105-pixel canvas, a 112-pixel window centred on the ink's
    centre of mass (moved only as far as keeps every stroke in), averaged over 4x4 blocks. Drawers
    put the same character 1.8 pixels (at 28x28) from its mean position on average; centring
    takes that out of what the base must learn, as MNIST's preprocessing does. A chunk of
    drawings is framed in numpy at once: centres (`_corners`), windows (`_windows`, paper outside
    the canvas) and the block averages, rounded as PIL's `reduce` rounds, bit for bit (tested
    against the PIL paste and `reduce` on Omniglot drawings and made images)."""
    out: list[bytes] = []
    for c in range(0, len(squares), CHUNK):
        gray = np.stack([np.asarray(s, np.uint8) for s in squares[c : c + CHUNK]])
        if gray.shape[1:] != (CANVAS, CANVAS):
            raise ValueError(f"frame_ink takes {CANVAS}x{CANVAS} drawings (square_gray), not {gray.shape[1:]}")
        levels = _block_means(_windows(gray, _corners(gray)))
        out += [lv.tobytes() for lv in levels]
    return out


def _block_means(windows: np.ndarray) -> np.ndarray:
    """[B, WINDOW, WINDOW] levels -> [B, SIDE, SIDE]: each REDUCE x REDUCE block's mean, rounded as
    PIL's `Image.reduce` rounds it ((sum + 8) >> 4), summed in row then column slices."""
    rows = sum(windows[:, i::REDUCE].astype(np.uint16) for i in range(REDUCE))
    cols = sum(rows[:, :, i::REDUCE] for i in range(REDUCE))
    return ((cols + REDUCE * REDUCE // 2) // (REDUCE * REDUCE)).astype(np.uint8)


def _windows(gray: np.ndarray, corners: list[tuple[int, int]]) -> np.ndarray:
    """[B, n, n] gray levels and each window's top-left corner -> [B, WINDOW, WINDOW]: the canvas
    seen through the window, paper (255) where the window reaches past it."""
    n = gray.shape[1]
    out = np.full((len(gray), WINDOW, WINDOW), 255, np.uint8)
    for win, g, (left, top) in zip(out, gray, corners):
        x0, y0, x1, y1 = max(0, left), max(0, top), min(n, left + WINDOW), min(n, top + WINDOW)
        if x0 < x1 and y0 < y1:
            win[y0 - top : y1 - top, x0 - left : x1 - left] = g[y0:y1, x0:x1]
    return out


def _corners(gray: np.ndarray) -> list[tuple[int, int]]:
    """[B, n, n] gray levels -> the top-left corner (x, y) of each drawing's window, in
    whole pixels: centred on the ink's centre of mass, then moved the least that keeps
    all ink inside (the window is wider than the canvas, so that always can be done)."""
    n = gray.shape[1]
    a = gray.astype(np.float32)
    ones, pos = np.ones(n, dtype=np.float32), np.arange(n, dtype=np.float64) + 0.5  # pixel centres
    rows = (255.0 * n - a @ ones).astype(np.float64)  # ink per row and per column (exact integer sums)
    cols = (255.0 * n - ones @ a).astype(np.float64)
    total = rows.sum(1)
    blank = total <= 0  # an empty drawing: the window centred on the canvas
    safe = np.where(blank, 1.0, total)
    corner = np.stack([np.where(blank, n / 2, cols @ pos / safe), np.where(blank, n / 2, rows @ pos / safe)], 1)
    corner = np.floor(corner - WINDOW / 2 + 0.5)
    first = lambda ink: np.where(blank, 0, np.argmax(ink > 0, axis=1))  # first inked row (column) ...
    last = lambda ink: np.where(blank, n, n - np.argmax(ink[:, ::-1] > 0, axis=1))  # ... and the edge after the last
    lo = np.stack([last(cols), last(rows)], 1) - WINDOW  # keep the far edge of the ink in ...
    hi = np.stack([first(cols), first(rows)], 1)  # ... and the near edge
    return [tuple(c) for c in np.clip(corner, lo, hi).astype(int).tolist()]


def levels_to_tensor(levels: list[bytes], side: int = SIDE) -> torch.Tensor:
    """Gray levels of B images (`frame_ink`) -> float32 [B, 1, side, side], ink = 1,
    through one lookup for the batch."""
    gray = torch.frombuffer(bytearray(b"".join(levels)), dtype=torch.uint8)
    return from_levels(gray).view(-1, 1, side, side)


_INK = 1.0 - np.arange(256, dtype=np.float32) / np.float32(255.0)  # gray level -> ink, paper 0.0


def from_levels(gray: torch.Tensor) -> torch.Tensor:
    """8-bit gray levels (paper 255) -> the model's float input, ink = 1.0."""
    return torch.from_numpy(_INK[gray.numpy()])  # numpy indexes by uint8 directly: 4x faster than .long()


def to_levels(x: torch.Tensor) -> torch.Tensor | None:
    """The inverse of `from_levels`, or None when x is not exactly such an image:
    lets a preprocessed image be stored in a quarter of the bytes, losslessly."""
    gray = torch.round((1.0 - x) * 255.0)
    if not (torch.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 255):
        return None
    gray = gray.to(torch.uint8)
    return gray if torch.equal(from_levels(gray), x) else None


def open_image(data: bytes, max_pixels: int, max_side: int | None = None, on_size=None) -> Image.Image:
    """PNG/JPEG bytes -> a decoded PIL image. Checks the size from the header before decoding
    (the pixel count, each side, and `on_size(w, h)`, which may raise), so a decompression bomb
    or an oversized strip is refused without being inflated. A plain PNG is decoded without
    PIL's file machinery (models/png.py: the same pixels, a fifth less of a served drawing's decoding)."""
    found = png.plain(data)
    img = None if found else _header(data)
    w, h = found.size if found else img.size
    if w * h > max_pixels:
        raise ImageError("image_too_large", f"image has {w}x{h}={w * h} pixels, more than the limit {max_pixels}")
    if max_side and max(w, h) > max_side:
        raise ImageError("image_too_large", f"image is {w}x{h}, a side longer than the limit {max_side}")
    if on_size:
        on_size(w, h)
    if found:
        decoded = found.decode()
        if decoded is not None:
            return decoded
        img = _header(data)  # corrupt or cut short: PIL's loader names the fault
    try:
        img.load()
    except Exception as exc:
        raise ImageError("invalid_image", f"image data is corrupt: {exc.__class__.__name__}") from None
    return img


def _header(data: bytes) -> Image.Image:
    """PIL's image of PNG/JPEG bytes, its header read and nothing decoded yet."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageError("image_too_large", "image is a decompression bomb") from None
    except Image.UnidentifiedImageError:
        raise ImageError("invalid_image", f"not a decodable image: only {' and '.join(FORMATS)} are taken") from None
    except Exception as exc:  # PIL raises many types for garbage
        raise ImageError("invalid_image", f"not a decodable image: {exc.__class__.__name__}") from None


def decode_square(data: bytes, max_pixels: int, max_side: int | None = None, on_size=None) -> np.ndarray:
    """PNG/JPEG bytes -> `square_gray`'s levels, with `open_image`'s checks."""
    return square_gray(open_image(data, max_pixels, max_side, on_size))


def decode_image(data: bytes, max_pixels: int) -> torch.Tensor:
    """PNG/JPEG bytes -> float32 [1, SIDE, SIDE] as in training."""
    return levels_to_tensor(frame_ink([decode_square(data, max_pixels)]))[0]


# ---- any base's images: the preprocessing its JSON names ---------------------------------

RESIZED = "resize-v1"  # the folder family's: RGB or gray, the shorter side to SIZE, the centre square cut out


def resized(img: Image.Image, size: int, channels: int) -> bytes:
    """Any image -> `channels` x size x size 8-bit levels (channel-major): RGB (paper-white behind
    transparency) or gray, the shorter side brought to `size` (box filter), the centre square cut out."""
    if img.mode in ("RGBA", "LA", "P"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    img = img.convert("RGB" if channels == 3 else "L")
    w, h = img.size
    scale = size / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((w, h), Image.Resampling.BOX)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels).transpose(2, 0, 1).tobytes()


def prepare(imgs: list[Image.Image], prep: dict, shape: list[int]) -> torch.Tensor:
    """Decoded images -> the base's input [B, *shape], by the preprocessing its JSON names: the
    one function for a base's training images and the images it is sent."""
    return assemble([shrink(im, prep, shape) for im in imgs], prep, shape)


def shrink(img: Image.Image, prep: dict, shape: list[int]):
    """One decoded image -> its small form (a CANVAS-square gray drawing, or the base's levels):
    done to each image as soon as it is decoded, a request holds one image at full size at a time."""
    if prep["kind"] == PREPROCESSING:
        return square_gray(img)
    if prep["kind"] == RESIZED:
        return resized(img, shape[-1], shape[0])
    raise ValueError(f"unknown preprocessing {prep['kind']!r}; this code knows {PREPROCESSING} and {RESIZED}")


def assemble(small: list, prep: dict, shape: list[int]) -> torch.Tensor:
    """`shrink`'s small forms -> the base's input [B, *shape]."""
    if prep["kind"] == PREPROCESSING:
        return levels_to_tensor(frame_ink(small))
    levels = np.frombuffer(b"".join(small), np.uint8)
    # pixel value v as from_levels(255 - v): v / 255 in [0, 1], stored losslessly as levels like ink
    return from_levels(torch.from_numpy(255 - levels)).view(len(small), *shape)


KINDS = (PREPROCESSING, RESIZED)
