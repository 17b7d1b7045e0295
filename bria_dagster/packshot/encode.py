"""Encoding a packshot canvas in the preset's format, with sRGB embedded, within max_bytes.

JPEG and WebP start at the preset's ``quality``. When the file is over
``max_bytes``, JPEG first tries the same quality with optimised Huffman tables
(lossless, a few percent smaller), then both lower the quality in steps of
:data:`QUALITY_STEP` down to :data:`QUALITY_FLOOR`, never below: a file still too
big is returned as is and the ``max_bytes`` compliance rule reports it. PNG is
re-encoded with ``optimize=True`` (zlib level 9) when over the limit.
"""

from __future__ import annotations

import io

from PIL import Image

from .cutout import srgb_icc
from .presets import ChannelPreset

__all__ = ["QUALITY_FLOOR", "QUALITY_STEP", "encode_packshot"]

QUALITY_FLOOR = 60
QUALITY_STEP = 5


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, icc_profile=srgb_icc(), **options)
    return buf.getvalue()


def encode_packshot(image: Image.Image, preset: ChannelPreset) -> tuple[bytes, int | None]:
    """``(file bytes, quality used)`` of ``image`` (RGB, or RGBA when the preset allows
    alpha); the quality is None for PNG."""
    limit = preset.max_bytes
    if preset.format == "png":
        data = _save(image, "PNG")
        if limit is not None and len(data) > limit:
            data = _save(image, "PNG", optimize=True)
        return data, None
    fmt = "JPEG" if preset.format == "jpeg" else "WEBP"
    quality = preset.quality
    data = _save(image, fmt, quality=quality)
    if limit is None or len(data) <= limit:
        return data, quality
    optimize = fmt == "JPEG"
    if optimize:
        data = _save(image, fmt, quality=quality, optimize=True)
    while len(data) > limit and quality > QUALITY_FLOOR:
        quality = max(QUALITY_FLOOR, quality - QUALITY_STEP)
        data = _save(image, fmt, quality=quality, **({"optimize": True} if optimize else {}))
    return data, quality
