"""Rendering a packshot: the cutout's product centred on the channel's canvas.

Steps (one pass at the output size, every image op on 8-bit data):

1. decode the cutout to RGBA (:func:`~.cutout.load_cutout`);
2. bounding box of the product pixels (alpha > 8/255); none at all raises
   :class:`~bria_dagster.errors.EmptyCutoutError`;
3. crop to that box (plus 2 transparent pixels, so the resampling filter sees the
   product's edge fade out), convert to sRGB if the cutout carries another ICC profile;
   unless the preset says ``decontaminate=False``, take the backdrop's colour out of the
   product's edge band (:func:`~.spill.decontaminate`: a green backdrop leaves no green
   rim; the backdrop colour is read from the crop's transparent pixels);
4. premultiply alpha, then scale once so the box's limiting side spans ``fill`` of the
   canvas: OpenCV bicubic when enlarging (sharp, less overshoot at hard alpha edges than
   Lanczos, and several times faster than Pillow's resamplers), area averaging when
   reducing (alias-free). Resampling premultiplied pixels keeps the colour of
   transparent pixels (often black) out of the edges: no dark fringe;
5. one uint8 canvas (numpy) of the background
   colour (transparent when ``allow_alpha``); the optional contact shadow, then the
   product, composited over it in premultiplied form ("over" operator, OpenCV);
6. encode (:func:`~.encode.encode_packshot`; JPEG by OpenCV, which releases the GIL):
   sRGB ICC profile embedded, quality lowered step by step only if ``max_bytes``
   requires it.

Every heavy step (resample, composite, JPEG encode) runs in OpenCV without the GIL, so
renders in a thread pool use several cores; decoding the PNG (Pillow) is the exception.

Placement: ``center`` centres the bounding box; ``bottom`` centres it horizontally and
puts its lower edge ``margin`` x height above the canvas' bottom edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import EmptyCutoutError
from .compliance import BORDER_SHARE
from .cutout import ALPHA_THRESHOLD, load_cutout, product_bbox, product_edge_bbox, to_srgb
from .encode import encode_packshot
from .presets import ChannelPreset
from .spill import backdrop_colour, decontaminate

__all__ = ["SHADOW_OPACITY", "Packshot", "render_packshot"]

SHADOW_OPACITY = 0.25
"""Darkening at the contact shadow's core (0..1 of the background brightness)."""

_PAD = 2  # transparent source pixels kept around the product's box for the filter


@dataclass(frozen=True)
class Packshot:
    """A rendered packshot file and what the renderer did."""

    data: bytes
    content_type: str
    width: int
    height: int
    ext: str
    fill: float
    """The fill the renderer laid out: max(box width / canvas width, box height / height)."""
    quality: int | None
    """JPEG/WebP quality of the file (lower than the preset's when max_bytes forced it);
    None for PNG."""


@dataclass(frozen=True)
class _Layout:
    x: int  # the product box's top-left corner on the canvas
    y: int
    width: int  # the product box's size on the canvas
    height: int
    scale: float


def _layout(box_w: int, box_h: int, preset: ChannelPreset) -> _Layout:
    W, H = preset.width, preset.height
    scale = preset.fill * min(W / box_w, H / box_h)
    width = min(W, max(1, round(box_w * scale)))
    height = min(H, max(1, round(box_h * scale)))
    x = (W - width) // 2
    if preset.placement == "bottom":
        y = max(0, H - round(preset.margin * H) - height)
    else:
        y = (H - height) // 2
    return _Layout(x, y, width, height, scale)


def _scaled_product(
    image: Image.Image,
    box: tuple[int, int, int, int],
    edge: tuple[int, int, int, int],
    layout: _Layout,
    clean_edge: bool = True,
) -> tuple[np.ndarray, int, int]:
    """The product resampled to its canvas size, premultiplied RGBA (HxWx4 uint8), with the
    canvas position of its top-left corner. ``edge`` (the half-opaque box) is what the
    layout places; everything in ``box`` (every product pixel, padded) comes along.
    ``clean_edge``: the backdrop's colour is first taken out of the edge
    (:func:`~.spill.decontaminate`, read from the padded crop's transparent pixels)."""
    left, top = max(0, box[0] - _PAD), max(0, box[1] - _PAD)
    right, bottom = min(image.width, box[2] + _PAD), min(image.height, box[3] + _PAD)
    crop = to_srgb(image.crop((left, top, right, bottom)))
    if clean_edge:
        straight = np.asarray(crop)
        cleaned = decontaminate(straight, backdrop_colour(straight, ALPHA_THRESHOLD))
        if cleaned is not straight:
            crop = Image.fromarray(cleaned, "RGBA")
    sx = layout.width / (edge[2] - edge[0])
    sy = layout.height / (edge[3] - edge[1])
    size = (max(1, round((right - left) * sx)), max(1, round((bottom - top) * sy)))
    premultiplied = np.asarray(crop.convert("RGBa"))
    interpolation = cv2.INTER_CUBIC if layout.scale >= 1.0 else cv2.INTER_AREA
    resized = cv2.resize(premultiplied, size, interpolation=interpolation)
    return resized, layout.x - round((edge[0] - left) * sx), layout.y - round((edge[1] - top) * sy)


def _clip(
    x: int, y: int, size: tuple[int, int], canvas: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """Where a ``size`` image put at ``(x, y)`` lands on the canvas: ``(dest, source box)``,
    or None when it is entirely outside."""
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(canvas[0], x + size[0]), min(canvas[1], y + size[1])
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0), (x0 - x, y0 - y, x1 - x, y1 - y)


def _canvas(preset: ChannelPreset) -> np.ndarray:
    """HxWx4 uint8, premultiplied: the opaque background (4th channel 255, encoded as RGBX),
    or all transparent when the preset allows alpha."""
    shape = (preset.height, preset.width)
    if preset.allow_alpha:
        return np.zeros((*shape, 4), np.uint8)
    pixel = np.array([*preset.background_rgb, 255], np.uint8).view(np.uint32)[0]
    return np.full(shape, pixel, np.uint32).view(np.uint8).reshape(*shape, 4)


def _over(
    canvas: np.ndarray,
    layer: np.ndarray,
    x: int,
    y: int,
    uniform: tuple[int, int, int] | None = None,
) -> None:
    """Composite ``layer`` (premultiplied RGBA) over ``canvas`` at ``(x, y)``, in place:
    ``canvas = layer + canvas x (1 - layer alpha)``, clipped to the canvas.

    ``uniform``: the opaque canvas under the layer is known to be this colour everywhere,
    so ``canvas x (1 - alpha)`` is a lookup table of alpha (the fast path; the encoder
    ignores the fourth channel of an opaque canvas)."""
    placed = _clip(x, y, (layer.shape[1], layer.shape[0]), (canvas.shape[1], canvas.shape[0]))
    if placed is None:
        return
    (dx, dy), (x0, y0, x1, y1) = placed
    source = layer[y0:y1, x0:x1]
    target = canvas[dy : dy + y1 - y0, dx : dx + x1 - x0]
    alpha = cv2.extractChannel(source, 3)
    if uniform is None:
        kept = cv2.multiply(target, cv2.merge([cv2.bitwise_not(alpha)] * 4), scale=1 / 255)
    elif len(set(uniform)) == 1:
        kept = cv2.cvtColor(cv2.LUT(alpha, _kept_table(uniform[0])), cv2.COLOR_GRAY2RGBA)
    else:
        planes = [cv2.LUT(alpha, _kept_table(value)) for value in uniform]
        kept = cv2.merge([*planes, planes[0]])
    cv2.add(source, kept, dst=target)


@lru_cache(maxsize=64)
def _kept_table(value: int) -> np.ndarray:
    """What is left of a background channel ``value`` under alpha 0..255 (the lookup table
    of ``value x (255 - alpha) / 255``, rounded)."""
    alpha = np.arange(256, dtype=np.uint32)
    return ((value * (255 - alpha) + 127) // 255).astype(np.uint8)


def _contact_shadow(canvas: np.ndarray, layout: _Layout) -> None:
    """A soft elliptical shadow under the product's base, kept out of the border strip the
    background_purity rule measures."""
    H, W = canvas.shape[:2]
    bottom = layout.y + layout.height
    room = H - bottom - math.ceil(BORDER_SHARE * min(W, H)) - 2
    ry = min(max(2.0, 0.04 * layout.width), room / 2.25)  # reaches bottom + 2.25 ry
    if ry < 1.5:
        return  # no room below the product: the shadow would be hidden or touch the border
    sigma = ry / 2
    rx = max(ry, 0.48 * layout.width - 3 * sigma)  # blurred, it stays within the product
    spread = math.ceil(3 * sigma) + 1
    mask = Image.new("L", (math.ceil(2 * rx) + 2 * spread, math.ceil(2 * ry) + 2 * spread), 0)
    ImageDraw.Draw(mask).ellipse(
        (spread, spread, spread + 2 * rx, spread + 2 * ry), fill=round(255 * SHADOW_OPACITY)
    )
    mask = mask.filter(ImageFilter.GaussianBlur(sigma))
    layer = np.zeros((mask.height, mask.width, 4), np.uint8)  # black, premultiplied
    layer[..., 3] = np.asarray(mask)
    cx = layout.x + layout.width / 2
    cy = bottom - 0.25 * ry
    _over(canvas, layer, round(cx - rx) - spread, round(cy - ry) - spread)


def render_packshot(cutout: bytes | Image.Image, preset: ChannelPreset) -> Packshot:
    """Render ``cutout`` (RGBA PNG bytes or image; alpha = product matte) as ``preset``'s
    packshot file.

    Raises :class:`~bria_dagster.errors.EmptyCutoutError` when no pixel has alpha above
    8/255, and :class:`~bria_dagster.errors.ImageDecodeError` for bytes that do not decode.
    """
    image = load_cutout(cutout)
    box = product_bbox(image)
    if box is None:
        raise EmptyCutoutError(
            f"the cutout ({image.width}x{image.height}) has no product pixels: every alpha "
            f"value is <= {ALPHA_THRESHOLD}/255, so there is nothing to place on the "
            f"{preset.name!r} packshot; check the background removal of this image"
        )
    # The product's edge is where it is half opaque: a soft matte's faint fringe (a few
    # pixels of low alpha) neither counts toward the fill nor shows on the background.
    edge = product_edge_bbox(image) or box
    layout = _layout(edge[2] - edge[0], edge[3] - edge[1], preset)
    product, x, y = _scaled_product(image, box, edge, layout, preset.decontaminate)
    canvas = _canvas(preset)
    if preset.shadow:
        _contact_shadow(canvas, layout)
    uniform = None if preset.shadow or preset.allow_alpha else preset.background_rgb
    _over(canvas, product, x, y, uniform)
    data, quality = encode_packshot(canvas, preset)
    fill = max(layout.width / preset.width, layout.height / preset.height)
    return Packshot(
        data=data,
        content_type=preset.content_type,
        width=preset.width,
        height=preset.height,
        ext=preset.ext,
        fill=round(fill, 4),
        quality=quality,
    )
