"""Backdrop colour spill along a cutout's edge: estimating it, measuring it, removing it.

A cutout's edge pixels are mixes of the product and the backdrop it was photographed
on: ``I = a F + (1 - a) B``. A matte that gets alpha right but keeps ``I`` as the colour
(what the local engine and most matting tools write) leaves ``B`` in the edge's colour;
where the matte puts alpha too high (a pixel counted opaque that is still half backdrop,
or JPEG's chroma subsampling smearing the backdrop a pixel or two into the product), the
product gets a rim of the backdrop's colour. Over a white packshot background a green
backdrop shows as a green line round the product.

* :func:`backdrop_colour`: the backdrop colour ``B`` a cutout was cut from, read from the
  cutout itself (its transparent pixels next to the product still hold the photo's
  backdrop; when they hold a fill such as black, the faint semi-transparent ones);
* :func:`decontaminate`: for the cutout's edge band (product pixels that are not its
  confident interior), the backdrop's share ``beta`` of each pixel's colour along the line
  from the local interior colour ``F`` (the mean of the confident interior pixels
  nearby) to ``B``, measured in the chroma plane (RGB with the grey axis projected out),
  and the pixel's chroma moved back by ``beta (F - B)``: the backdrop part replaced by
  the product's own colour, whatever is off that line (real edge detail) kept. Its
  lightness moves toward ``F``'s by at most ``beta`` times the lightness difference. A
  pixel whose colour is not explained by ``F`` and ``B`` (a dark rim, a print) is left
  alone (:data:`LINE_FIT`), and so is a cutout on a grey backdrop (whose spill only
  lightens or darkens the edge);
* :func:`spill_share`: on a rendered packshot, the share of the product's outline along
  which the edge band is tinted by the backdrop (the compliance rule ``spill``).

All of it uses summed-area tables (``cv2.integral``) for the local means, looked up at
the edge pixels only, so the cost is about one pass over the product's box.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "LINE_FIT",
    "SPILL_MIN_CHROMA",
    "SPILL_TINT",
    "backdrop_colour",
    "decontaminate",
    "spill_share",
]

SPILL_TINT = 0.15
"""An edge pixel is tinted by the backdrop when at least this share of its colour is the
backdrop colour (its weight against the product colour and the packshot background, in
the chroma plane) and that share moves it visibly (``_TINT_LEVELS``)."""
_TINT_LEVELS = 12.0  # share x distance of B off the product-canvas line: a visible tint
LINE_FIT = 0.5
"""A pixel is recoloured fully when its distance off the product-backdrop line is at most
this share of its move along it, and not at all from twice that (linear in between)."""

SPILL_MIN_CHROMA = 20.0
"""RGB levels in the chroma plane: a backdrop with less chroma than this (grey, white,
black) is not decontaminated; a pixel whose local product colour is closer than this to
the backdrop is not corrected; and spill is measured only where the backdrop lies this
far off the line from the product's colour to the canvas colour."""
_CHROMA = np.array([[1, 1], [-1, 1], [0, -2]], np.float32) / np.array(
    [np.sqrt(2), np.sqrt(6)], np.float32
)  # RGB -> the plane normal to grey
_WORK = 1000  # px: spill_share measures the product's box scaled to at most this
_RING = 3  # px outside the product where the backdrop colour is read
_INTERIOR = 3  # cutout px inside the opaque region that may still hold spill
_DENSE = 0.25  # share of the edge band near an outline pixel that must be tinted to mark it
_OPAQUE = 250  # alpha from which a cutout pixel may be confident interior


def backdrop_colour(rgba: np.ndarray, threshold: int = 8) -> tuple[float, float, float] | None:
    """The colour (RGB floats) of the backdrop the cutout ``rgba`` (HxWx4 uint8, straight
    alpha) was cut from, or None when it holds no trace of one.

    Read from the transparent pixels (alpha <= ``threshold``) within a few px of the
    product: the median of their RGB. When those hold a fill rather than a photo (at least
    90% of them one grey, e.g. black), the median of the semi-transparent pixels
    (``threshold`` < alpha < 128) instead, whose colour is mostly backdrop."""
    alpha = cv2.extractChannel(rgba, 3)
    product = cv2.inRange(alpha, threshold + 1, 255)
    if not cv2.countNonZero(product):
        return None
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * _RING + 1, 2 * _RING + 1))
    ring = cv2.bitwise_and(cv2.dilate(product, kernel), cv2.bitwise_not(product))
    colours = _pixels(rgba, ring)
    if len(colours):
        packed = colours.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        values, counts = np.unique(packed, return_counts=True)
        top = int(values[np.argmax(counts)])
        grey_fill = top == (top & 0xFF) * 0x010101 and counts.max() >= 0.9 * len(packed)
        if not grey_fill:
            return tuple(float(v) for v in np.median(colours, axis=0))
    semi = _pixels(rgba, cv2.inRange(alpha, threshold + 1, 127))
    if not len(semi):
        return None
    return tuple(float(v) for v in np.median(semi, axis=0))


def _points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ys, xs)`` of the non-zero pixels of a uint8 mask (OpenCV: faster than numpy)."""
    found = cv2.findNonZero(mask)
    if found is None:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    found = found.reshape(-1, 2)  # (x, y) pairs
    return found[:, 1].astype(np.intp), found[:, 0].astype(np.intp)


def _pixels(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The RGB of ``image``'s pixels where ``mask`` is non-zero (Nx3 uint8)."""
    ys, xs = _points(mask)
    return image[ys, xs, :3]


def _interior_colour(
    rgb: np.ndarray, interior: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """The local product colour at each edge point ``(ys, xs)``: the mean colour (Nx3
    float32) of the ``interior`` pixels in the (2 radius + 1)^2 window round it, else in
    one 4 x as wide (thin parts); ``found`` is False where neither window holds any.

    One summed-area table of the masked colours and the mask (4 channels), looked up at
    the points only."""
    h, w = interior.shape
    weight = cv2.compare(interior, 0, cv2.CMP_GT) // 255
    masked = cv2.bitwise_and(rgb, rgb, mask=interior)
    exact = h * w * 255 < 2**31  # int32 sums cannot overflow
    table = cv2.integral(
        cv2.merge([*cv2.split(masked), weight]), sdepth=cv2.CV_32S if exact else cv2.CV_64F
    )

    def mean(py: np.ndarray, px: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        y0, y1 = np.clip(py - r, 0, h), np.clip(py + r + 1, 0, h)
        x0, x1 = np.clip(px - r, 0, w), np.clip(px + r + 1, 0, w)
        sums = (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]).astype(np.float32)
        count = sums[:, 3]
        return sums[:, :3] / np.maximum(count, 1.0)[:, None], count > 0

    near, found = mean(ys, xs, radius)
    if not found.all():
        far, far_found = mean(ys[~found], xs[~found], 4 * radius)
        near[~found] = far
        found[~found] = far_found
    return near, found


def decontaminate(
    rgba: np.ndarray, backdrop: tuple[float, float, float] | None, threshold: int = 0
) -> np.ndarray:
    """``rgba`` (HxWx4 uint8, straight alpha) with the backdrop's colour taken out of its
    edge band: a new array, or ``rgba`` itself when there is nothing to do.

    The edge band is every pixel with alpha > ``threshold`` (by default every visible one,
    down to the faintest, which would otherwise leave a haze of backdrop colour) that is
    not confident interior (alpha >= 250, at least 3 px inside the opaque region: spill
    reaches a pixel or two past where the matte turns opaque). Alpha is not changed."""
    if backdrop is None or np.linalg.norm(np.asarray(backdrop) @ _CHROMA) < SPILL_MIN_CHROMA:
        return rgba  # no backdrop, or a grey one: its spill is only lighter or darker
    alpha = cv2.extractChannel(rgba, 3)
    opaque = cv2.inRange(alpha, _OPAQUE, 255)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * _INTERIOR + 1, 2 * _INTERIOR + 1))
    interior = cv2.erode(opaque, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band = cv2.bitwise_and(cv2.inRange(alpha, threshold + 1, 255), cv2.bitwise_not(interior))
    ys, xs = _points(band)
    if not len(ys) or not cv2.countNonZero(interior):
        return rgba
    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    product, found = _interior_colour(rgb, interior, ys, xs, 3 * _INTERIOR)
    colour = rgb[ys, xs].astype(np.float32)
    cleaned = _unmix(colour, product, np.asarray(backdrop, np.float32)[None, :], found)
    out = rgba.copy()
    out[ys, xs, :3] = np.clip(cleaned + 0.5, 0, 255).astype(np.uint8)
    return out


def _unmix(
    colour: np.ndarray, product: np.ndarray, backdrop: np.ndarray, usable: np.ndarray
) -> np.ndarray:
    """``colour`` (Nx3 float32) with the backdrop's part replaced by the product's.

    In the chroma plane (where JPEG's subsampling smears the backdrop's colour a pixel or
    two into the product without touching the lightness) the backdrop's share ``beta`` is
    the projection of ``colour - product`` on ``backdrop - product``; the chroma moves
    back by ``beta`` times that line, gated by :data:`LINE_FIT`. The lightness (grey axis)
    moves toward the product's by at most ``beta`` times the product-backdrop lightness
    difference, and never past the product's."""
    c, f, b = colour @ _CHROMA, product @ _CHROMA, backdrop @ _CHROMA
    line = b - f
    length2 = np.einsum("ij,ij->i", line, line)
    beta = np.einsum("ij,ij->i", c - f, line) / np.maximum(length2, 1e-6)
    beta = np.clip(beta, 0.0, 1.0)
    off = np.linalg.norm(c - f - beta[:, None] * line, axis=1)
    moved = beta * np.sqrt(length2)
    fit = np.clip(2.0 - off / (LINE_FIT * np.maximum(moved, 1e-6)), 0.0, 1.0)
    beta = np.where(usable & (length2 >= SPILL_MIN_CHROMA**2), beta * fit, 0.0)
    chroma_fix = (-beta[:, None] * line) @ _CHROMA.T  # back to RGB, no lightness change
    grey = np.float32(1 / 3)
    lightness = colour.sum(1) * grey  # mean of R, G, B: the grey-axis part per channel
    explained = beta * (product.sum(1) - backdrop.sum(1)) * grey
    wanted = product.sum(1) * grey - lightness
    shift = np.where(
        np.sign(explained) == np.sign(wanted),
        np.sign(wanted) * np.minimum(np.abs(explained), np.abs(wanted)),
        0.0,
    )
    return colour + chroma_fix + shift[:, None]


def spill_share(
    rgb: np.ndarray,
    background: np.ndarray,
    backdrop: tuple[float, float, float],
    canvas: tuple[int, int, int],
) -> tuple[float, int] | None:
    """How much of the product's outline on a packshot is tinted by the backdrop colour.

    ``rgb``: the packshot (HxWx3 uint8, flattened onto ``canvas``, its background
    colour); ``background``: uint8 HxW, 255 where a pixel is background. The product is
    the rest, measured on its box scaled down by the smallest whole factor that brings it
    to at most 1000 px (area averaging). Its *edge band* is the product pixels within
    ``w`` px of the background (``w`` = 0.5% of the product's longer side there, at least
    3). In the chroma plane (RGB with the grey axis projected out; compositing stays
    linear there), each band pixel's colour ``E`` is written as
    ``x F + y B + (1 - x - y) canvas`` (least squares; ``F`` the local product colour: the
    mean of the product pixels 2 ``w`` to 3 ``w`` deep within 3 ``w``): ``y`` is the
    backdrop's share. Where ``B`` lies at least :data:`SPILL_MIN_CHROMA` off the line from
    ``F`` to the canvas colour (the only part of it that can show), the pixel is tinted
    when ``y >=`` :data:`SPILL_TINT` and ``y`` times that distance is at least 12 levels.
    The outline is the product pixels touching the background; an outline pixel is
    tinted when at least a quarter of the band pixels within ``w`` px of it (a square
    window) are tinted: a line of spill, not a stray pixel.

    Returns ``(share of outline pixels tinted, outline pixels)``, or None when the image
    has no product."""
    product = cv2.bitwise_not(background)
    bx, by, bw, bh = cv2.boundingRect(product)
    if bw == 0 or bh == 0:
        return None
    pad = max(16, round(0.03 * max(bw, bh)))
    step = math.ceil(max(bw, bh) / _WORK)  # an integer factor: OpenCV's fast area path
    x0, y0 = max(0, bx - pad), max(0, by - pad)
    x1 = x0 + (min(rgb.shape[1], bx + bw + pad) - x0) // step * step
    y1 = y0 + (min(rgb.shape[0], by + bh + pad) - y0) // step * step
    product = product[y0:y1, x0:x1]
    rgb = rgb[y0:y1, x0:x1]
    if step > 1:
        size = ((x1 - x0) // step, (y1 - y0) // step)
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        product = cv2.inRange(cv2.resize(product, size, interpolation=cv2.INTER_AREA), 128, 255)
    product, rgb = np.ascontiguousarray(product), np.ascontiguousarray(rgb)
    width = max(3, round(0.005 * max(bw, bh) / step))
    # distance (px) of each product pixel to the nearest background pixel
    depth = cv2.distanceTransform(product, cv2.DIST_L2, 3)
    band = cv2.inRange(depth, 0.5, float(width))
    outline = cv2.inRange(depth, 0.5, 1.0)
    outline_count = cv2.countNonZero(outline)
    ys, xs = _points(band)
    if not len(ys) or not outline_count:
        return None
    interior = cv2.inRange(depth, 2.0 * width, 3.0 * width)
    F, found = _interior_colour(rgb, interior, ys, xs, 3 * width)
    # in the chroma plane (RGB with the grey axis projected out: mixing stays linear, and
    # spill of a grey backdrop, which only darkens the edge, is left to the halo rule)
    E = rgb[ys, xs].astype(np.float32) @ _CHROMA
    F = F @ _CHROMA
    W = np.asarray(canvas, np.float32)[None, :] @ _CHROMA
    B = np.asarray(backdrop, np.float32)[None, :] @ _CHROMA
    # E - W = x (F - W) + y (B - W), x damped so that a grey product (F = W) still solves
    u, v, d = F - W, np.broadcast_to(B - W, F.shape), E - W
    uu, uv, vv = (u * u).sum(1) + 1.0, (u * v).sum(1), (v * v).sum(1)
    ud, vd = (u * d).sum(1), (v * d).sum(1)
    det = uu * vv - uv * uv
    # off_line: how far B lies off the line from F to the canvas colour, the only part of
    # it that can show (spill along that line looks like more or less canvas)
    off_line = np.sqrt(np.maximum(det, 0.0) / uu)
    measurable = found & (off_line >= SPILL_MIN_CHROMA)
    y = (uu * vd - uv * ud) / np.where(measurable, det, np.inf)
    tinted = measurable & (y >= SPILL_TINT) & (y * off_line >= _TINT_LEVELS)
    mark = np.zeros(product.shape, np.float32)
    mark[ys[tinted], xs[tinted]] = 1.0
    window = (2 * width + 1, 2 * width + 1)
    near = cv2.boxFilter(mark, -1, window, normalize=False, borderType=cv2.BORDER_CONSTANT)
    band_near = cv2.boxFilter(
        (band > 0).astype(np.float32), -1, window, normalize=False, borderType=cv2.BORDER_CONSTANT
    )
    dense = cv2.compare(near, _DENSE * np.maximum(band_near, 1.0), cv2.CMP_GE)
    return cv2.countNonZero(cv2.bitwise_and(dense, outline)) / outline_count, outline_count
