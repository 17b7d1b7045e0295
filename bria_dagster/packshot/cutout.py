"""Reading a cutout: decode to RGBA, where the product is (alpha), colour space to sRGB.

A cutout is the remove step's output, an RGBA PNG whose alpha is the product
matte. A *product pixel* is one with alpha > :data:`ALPHA_THRESHOLD` (8 of 255,
about 3% opaque): fainter pixels are matting noise that would otherwise stretch
the bounding box. An image without alpha counts as fully opaque (the whole image
is the product).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms

from ..client.images import decode_image

__all__ = [
    "ALPHA_THRESHOLD",
    "alpha_array",
    "is_srgb_profile",
    "load_cutout",
    "product_bbox",
    "product_edge_bbox",
    "product_mask_lut",
    "srgb_icc",
    "to_srgb",
]

ALPHA_THRESHOLD = 8
"""A pixel belongs to the product when its alpha is above this (0..255)."""

_PRODUCT_LUT = [0] * (ALPHA_THRESHOLD + 1) + [255] * (255 - ALPHA_THRESHOLD)


def product_mask_lut() -> list[int]:
    """The ``Image.point`` table that maps alpha to 255 (product) or 0."""
    return _PRODUCT_LUT


def load_cutout(cutout: bytes | Image.Image, *, source: str = "cutout") -> Image.Image:
    """``cutout`` as an RGBA image (bytes go through
    :func:`~bria_dagster.client.images.decode_image`:
    size guard, EXIF orientation, mode normalisation). Its ICC profile, if any, stays in
    ``info['icc_profile']``; :func:`to_srgb` applies it."""
    if isinstance(cutout, bytes | bytearray | memoryview):
        image = decode_image(bytes(cutout), source=source)
    elif isinstance(cutout, Image.Image):
        image = cutout
    else:
        raise TypeError(
            f"a cutout is PNG bytes or a PIL.Image.Image, not a {type(cutout).__name__}"
        )
    if image.mode != "RGBA":
        icc = image.info.get("icc_profile")
        image = image.convert("RGBA")
        if icc:
            image.info["icc_profile"] = icc
    return image


def product_bbox(image: Image.Image) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of the product pixels of an RGBA image, or None when
    there are none."""
    return image.getchannel("A").point(_PRODUCT_LUT).getbbox()


EDGE_ALPHA = 128
"""Alpha from which a pixel is inside the product's visible edge (half opaque)."""

_EDGE_LUT = [0] * EDGE_ALPHA + [255] * (256 - EDGE_ALPHA)


def product_edge_bbox(image: Image.Image) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of the pixels with alpha >= :data:`EDGE_ALPHA`: the
    box the renderer scales to ``fill`` (None when no pixel is half opaque)."""
    return image.getchannel("A").point(_EDGE_LUT).getbbox()


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """The ICC profile embedded in every packshot (LittleCMS's built-in sRGB, 588 bytes)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def is_srgb_profile(icc: bytes) -> bool | None:
    """True when ``icc`` describes sRGB, False for another profile, None if unreadable."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile) or ""
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError):
        return None
    return "srgb" in description.lower()


def to_srgb(image: Image.Image) -> Image.Image:
    """``image`` (RGBA) converted from its embedded ICC profile to sRGB; unchanged when it
    has none, has an sRGB one, or one that is unreadable or not an RGB profile (then the
    pixels are taken as sRGB, as browsers do)."""
    icc = image.info.get("icc_profile")
    if not icc or is_srgb_profile(icc) is not False:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode=image.mode)
    except (OSError, ImageCms.PyCMSError, ValueError):
        return image
    return converted if converted is not None else image


def alpha_array(image: Image.Image) -> np.ndarray:
    """The alpha channel as a read-only uint8 array (HxW)."""
    return np.asarray(image.getchannel("A"))
