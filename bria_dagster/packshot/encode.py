"""Encoding a packshot canvas in the preset's format, with sRGB embedded, within max_bytes.

The canvas is the renderer's HxWx4 uint8 array: opaque RGB plus an unused fourth
channel, or premultiplied RGBA when the preset allows alpha.

JPEG goes through OpenCV's libjpeg-turbo (the same encoder and settings as Pillow's:
baseline, 4:2:0 chroma subsampling, the standard tables scaled by ``quality``), which
releases the GIL, so renders in threads run in parallel; the sRGB ICC profile is
inserted as an APP2 segment. PNG and WebP go through Pillow.

JPEG and WebP start at the preset's ``quality``. When the file is over
``max_bytes``, JPEG first tries the same quality with optimised Huffman tables
(lossless, a few percent smaller), then both lower the quality in steps of
:data:`QUALITY_STEP` down to :data:`QUALITY_FLOOR`, never below: a file still too
big is returned as is and the ``max_bytes`` compliance rule reports it. PNG is
re-encoded with ``optimize=True`` (zlib level 9) when over the limit.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from ..errors import EngineError
from .cutout import srgb_icc
from .presets import ChannelPreset

__all__ = ["QUALITY_FLOOR", "QUALITY_STEP", "encode_packshot", "jpeg_with_icc"]

QUALITY_FLOOR = 60
QUALITY_STEP = 5

_SOI, _APP0, _APP2 = b"\xff\xd8", b"\xff\xe0", b"\xff\xe2"
_ICC_MARKER = b"ICC_PROFILE\x00"
_ICC_CHUNK = 65519 - len(_ICC_MARKER) - 2  # payload room of one APP2 segment


def jpeg_with_icc(jpeg: bytes, icc: bytes) -> bytes:
    """``jpeg`` with the ICC profile ``icc`` in APP2 segments (ICC.1 annex B.4), placed
    after the JFIF APP0 segment when there is one."""
    if not jpeg.startswith(_SOI):
        raise ValueError("not a JPEG stream (no SOI marker)")
    position = 2
    if jpeg[2:4] == _APP0:
        position = 4 + int.from_bytes(jpeg[4:6], "big")
    chunks = [icc[i : i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)] or [b""]
    segments = b"".join(
        _APP2
        + (2 + len(_ICC_MARKER) + 2 + len(chunk)).to_bytes(2, "big")
        + _ICC_MARKER
        + bytes([number, len(chunks)])
        + chunk
        for number, chunk in enumerate(chunks, start=1)
    )
    return jpeg[:position] + segments + jpeg[position:]


def _jpeg_encoder(canvas: np.ndarray) -> Callable[[int, bool], bytes]:
    bgr = cv2.cvtColor(canvas, cv2.COLOR_RGBA2BGR)  # once, for every quality tried
    icc = srgb_icc()

    def encode(quality: int, optimize: bool) -> bytes:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, int(optimize)]
        ok, buf = cv2.imencode(".jpg", bgr, params)
        if not ok:
            raise EngineError(
                f"OpenCV could not encode a {canvas.shape[1]}x{canvas.shape[0]} JPEG at "
                f"quality {quality}; check the preset's size"
            )
        return jpeg_with_icc(buf.tobytes(), icc)

    return encode


def _pillow_image(canvas: np.ndarray, preset: ChannelPreset) -> Image.Image:
    """RGB, or straight RGBA when the preset allows alpha (the canvas is premultiplied)."""
    size = (canvas.shape[1], canvas.shape[0])
    if preset.allow_alpha:
        return Image.frombuffer("RGBa", size, canvas, "raw", "RGBa", 0, 1).convert("RGBA")
    return Image.frombuffer("RGBX", size, canvas, "raw", "RGBX", 0, 1).convert("RGB")


def _pillow_encoder(image: Image.Image, fmt: str) -> Callable[[int, bool], bytes]:
    def encode(quality: int, optimize: bool) -> bytes:
        buf = io.BytesIO()
        options: dict[str, object] = {"optimize": True} if optimize else {}
        if fmt == "WEBP":
            options["quality"] = quality
        image.save(buf, format=fmt, icc_profile=srgb_icc(), **options)
        return buf.getvalue()

    return encode


def encode_packshot(canvas: np.ndarray, preset: ChannelPreset) -> tuple[bytes, int | None]:
    """``(file bytes, quality used)`` of the renderer's canvas; the quality is None for
    PNG."""
    limit = preset.max_bytes
    if preset.format == "png":
        encode = _pillow_encoder(_pillow_image(canvas, preset), "PNG")
        data = encode(0, False)
        if limit is not None and len(data) > limit:
            data = encode(0, True)
        return data, None
    if preset.format == "jpeg":
        encode, optimize = _jpeg_encoder(canvas), True
    else:
        encode, optimize = _pillow_encoder(_pillow_image(canvas, preset), "WEBP"), False
    quality = preset.quality
    data = encode(quality, False)
    if limit is None or len(data) <= limit:
        return data, quality
    if optimize:
        data = encode(quality, True)
    while len(data) > limit and quality > QUALITY_FLOOR:
        quality = max(QUALITY_FLOOR, quality - QUALITY_STEP)
        data = encode(quality, optimize)
    return data, quality
