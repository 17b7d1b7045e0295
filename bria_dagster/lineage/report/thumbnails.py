"""Thumbnails for the audit report, as ``data:`` URIs so the page fetches nothing.

A JPEG, or a palette PNG that keeps transparency (shown over a checkerboard), made once
per distinct image sha256 (and kept in the report's cache by it).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
from PIL import Image

from ...errors import StorageAccessError, storage_access
from ...records.store import ImageStore
from .cache import Thumb

THUMBNAIL_PX = 160
JPEG_QUALITY = 75


class Thumbnails:
    """Makes thumbnails of the images rows name, reading each image from its store."""

    def __init__(self, px: int) -> None:
        self.px = px
        self._stores: dict[str, ImageStore] = {}

    def make(
        self, wanted: Mapping[str, Mapping[str, Any]], pool: ThreadPoolExecutor
    ) -> dict[str, Thumb | None]:
        """The thumbnail of each sha256 in ``wanted`` (made from its row's image, in
        ``pool``); ``None`` for an image the store could not give back."""
        return dict(zip(wanted, pool.map(self._make, wanted.values()), strict=True))

    def _make(self, row: Mapping[str, Any]) -> Thumb | None:
        data = self._read(row)
        if data is None:
            return None
        try:
            return thumbnail_data_uri(data, self.px)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None

    def _read(self, row: Mapping[str, Any]) -> bytes | None:
        """The image bytes: where ``image_uri`` says, else by sha256 in the same store."""
        uri = row["image_uri"]
        if not uri:
            return None
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            with storage_access(uri, "read image"):
                return fs.cat_file(path)
        except StorageAccessError:
            raise
        except (OSError, ValueError):
            pass
        folder = uri.rsplit("/sha256/", 1)[0] if "/sha256/" in uri else None
        if folder is None:
            return None
        store = self._stores.get(folder)
        try:
            if store is None:
                store = self._stores.setdefault(folder, ImageStore(folder))
            return store.get(row["image_sha256"])
        except StorageAccessError:
            raise
        except (OSError, ValueError):
            return None


def thumbnail_data_uri(data: bytes, px: int = THUMBNAIL_PX) -> Thumb:
    """``(data URI, width, height, has_alpha)`` of a thumbnail of ``data`` (longest side ``px``).

    A JPEG decodes at a reduced scale (``Image.draft``); an image with transparency
    becomes a palette PNG that keeps its alpha (shown over a checkerboard), any other
    a JPEG.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.draft(None, (px, px))  # JPEG: decode at 1/2, 1/4 or 1/8 scale (no-op otherwise)
        img.thumbnail((px, px), reducing_gap=2.0)
        alpha = "A" in img.getbands() or "transparency" in img.info
        if alpha:
            rgba = img.convert("RGBA")
            alpha = rgba.getchannel("A").getextrema()[0] < 255
            img = rgba if alpha else rgba.convert("RGB")
        buffer = io.BytesIO()
        if alpha:
            _palette_png(img, buffer)
            kind = "image/png"
        else:
            img.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
            kind = "image/jpeg"
        width, height = img.size
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{kind};base64,{encoded}", width, height, alpha


def _palette_png(img: Image.Image, buffer: io.BytesIO) -> None:
    """``img`` (RGBA) as a 256-colour PNG with alpha, about a third of a full RGBA PNG.

    The quantizer also rounds alpha: nearly opaque or clear palette entries are snapped
    back to 255 or 0, so the product does not show the checkerboard through it.
    """
    quantized = img.quantize(256, method=Image.Quantize.FASTOCTREE)
    palette = bytearray(quantized.getpalette("RGBA") or b"")
    for k in range(3, len(palette), 4):
        palette[k] = 255 if palette[k] >= 248 else 0 if palette[k] <= 7 else palette[k]
    quantized.putpalette(palette, "RGBA")
    quantized.save(buffer, "PNG", optimize=True)
