"""models/png.py: plain PNGs decode to PIL's own pixels without its file machinery, and every
other or odd file is left to PIL, which decodes or refuses it as before."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from models import png
from models.preprocess import ImageError, open_image


def encoded(im: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", **kw)
    return out.getvalue()


def drawing(mode: str, size=(105, 87)) -> Image.Image:
    rng = np.random.default_rng(sum(map(ord, mode)))
    gray = np.full(size[::-1], 255, np.uint8)
    gray[10:60, 20:40] = rng.integers(0, 256, (50, 20), dtype=np.uint8)  # filters of every kind get chosen
    return Image.fromarray(gray).convert(mode)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def rebuilt(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks, each with a correct CRC."""
    body = b"".join(struct.pack(">I4s", len(b), k) + b + struct.pack(">I", zlib.crc32(k + b)) for k, b in parts)
    return png.SIGNATURE + body


def test_the_modes_are_the_ones_pils_png_plugin_reads():
    for key, modes in png.MODES.items():
        assert PngImagePlugin._MODES[key] == modes


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("optimize", [False, True])
def test_a_plain_png_decodes_to_pils_pixels(mode, optimize):
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "a drawing app")  # ancillary chunks are skipped
    data = encoded(drawing(mode), optimize=optimize, pnginfo=info)
    found = png.plain(data)
    assert found is not None and found.size == (105, 87)
    ours, pils = found.decode(), Image.open(io.BytesIO(data))
    assert ours.mode == pils.mode and ours.tobytes() == pils.tobytes()
    assert open_image(data, 10**6).tobytes() == pils.tobytes()


def test_other_pngs_are_left_to_pil_which_decodes_them_as_before():
    gray = drawing("L")
    others = {
        "palette": encoded(gray.convert("P")),
        "16 bits": encoded(gray.convert("I").convert("I;16")),
        "transparency": encoded(gray, transparency=255),
        "not a PNG": (out := io.BytesIO(), gray.save(out, format="JPEG"), out.getvalue())[2],
    }
    parts = chunks(encoded(gray))
    ihdr = bytearray(parts[0][1])
    ihdr[12] = 1  # interlaced (Adam7): not taken here, whatever the data
    others["interlaced"] = rebuilt([(b"IHDR", bytes(ihdr)), *parts[1:]])
    for name, data in others.items():
        assert png.plain(data) is None, name
        if name != "interlaced":
            assert open_image(data, 10**6).tobytes() == Image.open(io.BytesIO(data)).tobytes(), name


def test_odd_files_are_refused_with_pils_verdict():
    data = encoded(drawing("L"))
    parts = chunks(data)
    idat = next(i for i, (k, _) in enumerate(parts) if k == b"IDAT")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # the CRC no longer matches
    garbage = rebuilt(parts[:idat] + [(b"IDAT", b"not zlib at all")] + parts[idat + 1 :])  # CRCs right, data wrong
    short = rebuilt(parts[:idat] + [(b"IDAT", parts[idat][1][: len(parts[idat][1]) // 2])] + parts[idat + 1 :])
    assert png.plain(flipped) is None and png.plain(data[: len(data) // 2]) is None  # no IEND
    assert png.plain(rebuilt(parts[1:])) is None  # IHDR not first
    assert png.plain(garbage).decode() is None and png.plain(short).decode() is None
    for bad in (flipped, data[: len(data) // 2], garbage, short):
        with pytest.raises(ImageError) as err:
            open_image(bad, 10**6)
        assert err.value.code == "invalid_image"


def test_a_plain_pngs_size_is_checked_before_anything_is_inflated(monkeypatch):
    bomb = encoded(Image.new("1", (8000, 8000), 1))  # 64 M pixels in a few kB
    assert len(bomb) < 100_000 and png.plain(bomb) is not None
    monkeypatch.setattr(png.Plain, "decode", lambda self: pytest.fail("inflated before the size was checked"))
    with pytest.raises(ImageError) as err:
        open_image(bomb, 4_000_000)
    assert err.value.code == "image_too_large"
    strip = encoded(Image.new("L", (9000, 1), 255))
    with pytest.raises(ImageError, match="a side longer than the limit 8192"):
        open_image(strip, 10**6, 8192)
    seen = []

    def over_budget(w: int, h: int) -> None:  # the request's pixel budget (app/api/inputs.py)
        seen.append((w, h))
        raise ImageError("too_many_pixels", "over the request's budget")

    with pytest.raises(ImageError, match="budget"):
        open_image(strip, 10**6, on_size=over_budget)
    assert seen == [(9000, 1)]
