"""Classical outpainting for the local ``expand`` endpoint.

:func:`plan_expand` turns fal's expand parameters into a :class:`Placement`
(canvas size, size and position of the original on it), following fal's rules.
:func:`expand_image` pastes the original and fills the new area by edge
extension that is blurred more and more with distance from the seam (a Gaussian
pyramid sampled only over the new strips), plus seeded grain at the border's
own noise level, so plain and gradient backgrounds continue without a seam.
The original pixels are kept exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from bria_dagster.errors import EngineError

__all__ = ["MAX_CANVAS_PIXELS", "Placement", "expand_image", "plan_expand"]

MAX_CANVAS_PIXELS = 5000 * 5000
"""fal's expand limit: the canvas area must stay under 5000x5000 (25 MP)."""

_SPREAD = 2.0  # blur radius grows as distance / _SPREAD from the seam
_MAX_LEVELS = 7  # coarsest pyramid level used (blur of ~128 px)
_NOISE_STRIP = 16  # width, in pixels, of the border strip whose noise is measured
_MIN_GRAIN = 0.5  # grey levels of dither, even when the border is noiseless
_TILE = 256  # the new area is filled in tiles of this many pixels square


@dataclass(frozen=True)
class Placement:
    """Where the original goes on the expanded canvas.

    ``location`` is the top-left corner of the (resized) original in canvas
    pixels; it may be negative, and the original may stick out of the canvas.
    """

    canvas: tuple[int, int]
    size: tuple[int, int]
    location: tuple[int, int]

    @property
    def visible_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: the part of the canvas covered by the original."""
        (cw, ch), (pw, ph), (x, y) = self.canvas, self.size, self.location
        return max(x, 0), max(y, 0), min(x + pw, cw), min(y + ph, ch)

    def unchanged(self, input_size: tuple[int, int]) -> bool:
        """True when expanding an image of ``input_size`` gives it back as it is: the
        canvas is the image's own size and the image fills it unresized, at (0, 0)
        (e.g. a square image to ``1:1``). Nothing would be filled: a no-op."""
        size = tuple(input_size)
        return self.canvas == size and self.size == size and self.location == (0, 0)


def _pair(name: str, value: tuple[int, int]) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise EngineError(f"{name} must be a pair of integers, got {value!r}") from None
    return a, b


def _positive_pair(name: str, value: tuple[int, int]) -> tuple[int, int]:
    w, h = _pair(name, value)
    if w <= 0 or h <= 0:
        raise EngineError(f"{name} must be positive, got {w}x{h}")
    return w, h


def _parse_ratio(aspect_ratio: str) -> tuple[int, int]:
    parts = str(aspect_ratio).split(":")
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        a = b = 0
    if len(parts) != 2 or a <= 0 or b <= 0:
        raise EngineError(f"aspect_ratio must look like '4:5', got {aspect_ratio!r}")
    return a, b


def plan_expand(
    input_size: tuple[int, int],
    *,
    canvas_size: tuple[int, int] | None,
    original_image_size: tuple[int, int] | None = None,
    original_image_location: tuple[int, int] | None = None,
    aspect_ratio: str | None = None,
) -> Placement:
    """Decide the canvas and the original's size and position, as fal does.

    ``aspect_ratio`` wins over everything else: the canvas is the smallest one
    of that ratio containing the original at full resolution, centred.
    Otherwise ``canvas_size`` is required; the original is resized to
    ``original_image_size`` (default: its own size) and placed at
    ``original_image_location`` (default: centred).
    """
    w, h = _positive_pair("input image size", input_size)
    if aspect_ratio is not None:
        a, b = _parse_ratio(aspect_ratio)
        if w * b >= h * a:  # wider than the ratio: keep the width
            cw, ch = w, math.ceil(w * b / a)
        else:
            cw, ch = math.ceil(h * a / b), h
        pw, ph = w, h
        x, y = (cw - w) // 2, (ch - h) // 2
    else:
        if canvas_size is None:
            raise EngineError("expand needs canvas_size (or aspect_ratio); neither was given")
        cw, ch = _positive_pair("canvas_size", canvas_size)
        pw, ph = (
            (w, h)
            if original_image_size is None
            else _positive_pair("original_image_size", original_image_size)
        )
        if original_image_location is None:
            x, y = (cw - pw) // 2, (ch - ph) // 2
        else:
            x, y = _pair("original_image_location", original_image_location)
    if cw * ch >= MAX_CANVAS_PIXELS:
        raise EngineError(
            f"expand canvas {cw}x{ch} has {cw * ch} pixels; it must be under 5000x5000 "
            f"({MAX_CANVAS_PIXELS}): choose a smaller canvas_size or a smaller original"
        )
    placement = Placement(canvas=(cw, ch), size=(pw, ph), location=(x, y))
    x0, y0, x1, y1 = placement.visible_box
    if x1 <= x0 or y1 <= y0:
        raise EngineError(
            f"the original ({pw}x{ph} at {x},{y}) does not overlap the {cw}x{ch} canvas: "
            "move original_image_location inside the canvas"
        )
    return placement


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == size:
        return image
    shrink = size[0] <= w and size[1] <= h
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    if image.shape[2] == 3:
        return cv2.resize(image, size, interpolation=interp)
    # RGBA: resize premultiplied so transparent pixels do not bleed their colour.
    f = image.astype(np.float32)
    a = f[..., 3:4] / 255.0
    f[..., :3] *= a
    r = cv2.resize(f, size, interpolation=interp)
    ra = np.clip(r[..., 3:4], 0, 255)
    rgb = r[..., :3] * (255.0 / np.maximum(ra, 1e-3))
    out = np.concatenate([rgb, ra], axis=2)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _noise_sigma(strip: np.ndarray) -> np.ndarray:
    """Per-channel noise level of a border strip (robust to gradients and edges)."""
    f = strip.astype(np.float32)
    diffs = []
    if f.shape[1] > 1:
        diffs.append(np.abs(np.diff(f, axis=1)).reshape(-1, 3))
    if f.shape[0] > 1:
        diffs.append(np.abs(np.diff(f, axis=0)).reshape(-1, 3))
    if not diffs:
        return np.zeros(3, np.float32)
    # median |difference of two samples| = 0.6745 * sqrt(2) * sigma for Gaussian noise
    return (np.median(np.concatenate(diffs), axis=0) / (0.6745 * math.sqrt(2))).astype(np.float32)


def _fill_block(
    pyramid: list[np.ndarray], box: tuple[int, int, int, int], block: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred edge extension over ``block`` (x0, y0, x1, y1 of the canvas) and the weight
    of grain there, both float32 with the channels folded into rows (h, w*3) for speed."""
    x0, y0, x1, y1 = box
    bx0, by0, bx1, by1 = block
    bw, bh = bx1 - bx0, by1 - by0
    xs = np.repeat(np.arange(bx0, bx1, dtype=np.float32), 3)
    ys = np.arange(by0, by1, dtype=np.float32)
    dx = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - ys, ys - (y1 - 1)), 0)
    dist = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
    # Nested blend from the coarsest level down: at distance d the blur radius is ~d/_SPREAD.
    # Level k only matters closer than _SPREAD * 2**(k+1): far blocks skip the fine levels.
    nearest = float(dist.min())
    region = None
    for k in range(len(pyramid) - 1, -1, -1):
        reach = _SPREAD * 2 ** (k + 1)
        if region is not None and nearest >= reach:
            continue
        if k == 0:
            level = pyramid[0][by0:by1, bx0:bx1].astype(np.float32)
        else:
            # pyrDown puts level-k pixel i at full-resolution coordinate i * 2**k.
            inv = 1.0 / 2**k
            m = np.array([[inv, 0, bx0 * inv], [0, inv, by0 * inv]], np.float32)
            level = cv2.warpAffine(
                pyramid[k],
                m,
                (bw, bh),
                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        level = level.reshape(bh, bw * 3)
        if region is None:
            region = level
        else:
            region -= level
            region *= np.minimum(dist * np.float32(1 / reach), 1.0)
            region += level
    assert region is not None  # the coarsest level is always used
    # Grain fades in from the seam, where the extension still carries the border's own noise.
    return region, np.minimum(dist * np.float32(1 / 4), 1.0)


def _fill_rgb(rgb: np.ndarray, canvas: tuple[int, int], box: tuple, seed: int) -> np.ndarray:
    cw, ch = canvas
    x0, y0, x1, y1 = box
    # Edge extension of the original over the whole canvas (the original stays exact).
    out = cv2.copyMakeBorder(rgb, y0, ch - y1, x0, cw - x1, cv2.BORDER_REPLICATE)
    reach = max(x0, y0, cw - x1, ch - y1)
    levels_count = int(np.clip(math.ceil(math.log2(max(reach, 2) / _SPREAD)), 1, _MAX_LEVELS))
    pyramid = [out, cv2.pyrDown(out).astype(np.float32)]
    for _ in range(levels_count - 1):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    rng = np.random.default_rng(seed)
    sides = (  # new-area strips (x0, y0, x1, y1) and the border strip each continues
        ((0, 0, cw, y0), rgb[:_NOISE_STRIP]),
        ((0, y1, cw, ch), rgb[-_NOISE_STRIP:]),
        ((0, y0, x0, y1), rgb[:, :_NOISE_STRIP]),
        ((x1, y0, cw, y1), rgb[:, -_NOISE_STRIP:]),
    )
    for (sx0, sy0, sx1, sy1), border in sides:
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        # The floor is a dither against banding in smooth fills of 8-bit images.
        sigma = np.maximum(_noise_sigma(border), _MIN_GRAIN)
        # Tiles bound the memory on huge canvases and let far tiles skip fine levels.
        for by0 in range(sy0, sy1, _TILE):
            for bx0 in range(sx0, sx1, _TILE):
                by1, bx1 = min(by0 + _TILE, sy1), min(bx0 + _TILE, sx1)
                region, grain_weight = _fill_block(pyramid, box, (bx0, by0, bx1, by1))
                grain = rng.standard_normal(region.shape, dtype=np.float32)
                grain *= np.tile(sigma, bx1 - bx0)
                grain *= grain_weight
                region += grain
                region += 0.5
                np.clip(region, 0, 255, out=region)
                out[by0:by1, bx0:bx1] = region.astype(np.uint8).reshape(by1 - by0, bx1 - bx0, 3)
    return out


def expand_image(image: np.ndarray, placement: Placement, *, seed: int = 0) -> np.ndarray:
    """The expanded canvas: the original (resized and placed) plus a classical fill.

    ``image`` is uint8 HxWx3 (RGB) or HxWx4 (RGBA). The result has the canvas
    size and the same channels; for RGBA the original's alpha is kept and the
    new area is fully transparent.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EngineError(
            f"expand_image needs a uint8 HxWx3 or HxWx4 array, got {image.dtype} {image.shape}"
        )
    if seed < 0:
        raise EngineError(f"seed must be a non-negative integer, got {seed}")
    (cw, ch), (x, y) = placement.canvas, placement.location
    x0, y0, x1, y1 = box = placement.visible_box
    if x1 <= x0 or y1 <= y0:
        raise EngineError(f"placement {placement} leaves no part of the original on the canvas")
    resized = _resize(image, placement.size)
    crop = resized[y0 - y : y1 - y, x0 - x : x1 - x]
    rgb = np.ascontiguousarray(crop[..., :3])
    filled = rgb.copy() if box == (0, 0, cw, ch) else _fill_rgb(rgb, (cw, ch), box, seed)
    if image.shape[2] == 3:
        return filled
    alpha = np.zeros((ch, cw, 1), np.uint8)
    alpha[y0:y1, x0:x1, 0] = crop[..., 3]
    return np.concatenate([filled, alpha], axis=2)
