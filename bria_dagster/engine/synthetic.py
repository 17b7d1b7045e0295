"""Deterministic synthetic product photos with exact ground-truth alpha.

Used by tests, benchmarks and the example catalog, so the project never needs
downloaded images. A product (bottle, box, mug with a handle hole, or lamp) is
drawn with shading and anti-aliased edges and composited onto a studio
background of one of the categories below. Every backdrop except the textured
one gets a soft contact shadow under the product (coloured paper too).

:data:`HARD_CATEGORIES` are two harder backdrops for tuning the offline matte (not
used by the sample catalog): ``vignette``, a two-tone sweep under a strong off-centre
radial vignette with neutral (grey or black) products half the time, and ``bokeh``,
out-of-focus discs of light behind the product.

:func:`make_cutout` draws the same products as the remove step would output them:
an RGBA PNG with exact anti-aliased alpha on a transparent canvas.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

__all__ = ["CATEGORIES", "HARD_CATEGORIES", "SHAPES", "make_cutout", "make_product_photo"]

CATEGORIES = ("white_studio", "gray_gradient", "colored", "low_contrast", "textured")
HARD_CATEGORIES = ("vignette", "bokeh")
SHAPES = ("bottle", "box", "mug", "lamp")
_SS = 4  # supersampling factor for anti-aliased edges


def _shape_mask(shape: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    W, H = w * _SS, h * _SS
    m = np.zeros((H, W), np.uint8)
    cx = int(W * rng.uniform(0.42, 0.58))
    base = int(H * rng.uniform(0.78, 0.86))
    if shape == "bottle":
        bw, bh = int(W * rng.uniform(0.16, 0.24)), int(H * rng.uniform(0.45, 0.58))
        cv2.rectangle(m, (cx - bw, base - bh), (cx + bw, base), 255, -1)
        cv2.ellipse(m, (cx, base - bh), (bw, bw // 2), 0, 0, 360, 255, -1)
        nw = bw // 3
        cv2.rectangle(m, (cx - nw, base - bh - bw), (cx + nw, base - bh), 255, -1)
    elif shape == "box":
        bw, bh = int(W * rng.uniform(0.2, 0.3)), int(H * rng.uniform(0.3, 0.45))
        cv2.rectangle(m, (cx - bw, base - bh), (cx + bw, base), 255, -1)
    elif shape == "mug":
        r = int(W * rng.uniform(0.15, 0.2))
        top = base - int(r * 2.2)
        cv2.rectangle(m, (cx - r, top), (cx + r, base), 255, -1)
        hc = (cx + r, (top + base) // 2)
        cv2.ellipse(m, hc, (int(r * 0.7), int(r * 0.7)), 0, -90, 90, 255, int(r * 0.28))
    else:  # lamp: shade + thin stem + base
        r = int(W * rng.uniform(0.18, 0.24))
        top = base - int(H * 0.55)
        pts = np.array(
            [[cx - r // 2, top], [cx + r // 2, top], [cx + r, top + r], [cx - r, top + r]]
        )
        cv2.fillPoly(m, [pts], 255)
        cv2.rectangle(m, (cx - max(2, r // 14), top + r), (cx + max(2, r // 14), base), 255, -1)
        cv2.ellipse(m, (cx, base), (r // 2, r // 8), 0, 0, 360, 255, -1)
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _background(
    category: str,
    w: int,
    h: int,
    rng: np.random.Generator,
    backdrop: tuple[int, int, int] | None = None,
) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if category in ("white_studio", "low_contrast"):
        bg = np.full((h, w, 3), rng.uniform(243, 252), np.float32)
    elif category == "gray_gradient":
        top, bottom = rng.uniform(200, 225), rng.uniform(225, 245)
        g = top + (bottom - top) * yy / h
        vignette = 1 - 0.12 * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
        bg = np.repeat((g * vignette)[..., None], 3, axis=2)
    elif category == "colored":
        colour = rng.uniform(40, 230, 3)
        colour[rng.integers(3)] = rng.uniform(20, 80)
        if backdrop is not None:  # drawn from rng all the same: the rest stays as it was
            colour = np.asarray(backdrop, np.float64)
        bg = (
            np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
            * (0.92 + 0.08 * yy / h)[..., None]
        )
    elif category == "vignette":  # two-tone sweep, strong off-centre radial fall-off
        top, bottom = rng.uniform(150, 215), rng.uniform(200, 245)
        g = top + (bottom - top) * np.clip(yy / h + rng.uniform(-0.2, 0.2), 0, 1)
        cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.6)
        r2 = ((xx / w - cx) ** 2 + (yy / h - cy) ** 2) / rng.uniform(0.15, 0.35)
        vignette = 1 - rng.uniform(0.2, 0.45) * (1 - np.exp(-r2))
        tint = rng.uniform(0.94, 1.0, 3)
        bg = (g * vignette)[..., None] * tint
    elif category == "bokeh":  # out-of-focus discs of light on a dim, coloured base
        base = rng.uniform(20, 120, 3)
        layer = np.zeros((h, w, 3), np.float32)
        for _ in range(int(rng.integers(25, 70))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            radius = int(min(w, h) * rng.uniform(0.02, 0.09))
            colour = tuple(float(v) for v in rng.uniform(40, 255, 3) * rng.uniform(0.3, 1))
            cv2.circle(layer, centre, radius, colour, -1, lineType=cv2.LINE_AA)
        layer = cv2.GaussianBlur(layer, (0, 0), min(w, h) * rng.uniform(0.006, 0.02))
        haze = cv2.GaussianBlur(rng.uniform(0, 1, (8, 8)).astype(np.float32), (0, 0), 1.5)
        haze = cv2.resize(haze, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        bg = np.clip(base * (0.6 + 0.8 * haze) + 0.8 * layer, 0, 255)
    else:  # textured: wood-like stripes plus noise
        base = rng.uniform(120, 190, 3)
        stripes = 18 * np.sin(xx / rng.uniform(6, 14) + 3 * np.sin(yy / 40))
        noise = cv2.GaussianBlur(rng.normal(0, 12, (h, w)).astype(np.float32), (0, 0), 1.5)
        bg = base + (stripes + noise)[..., None]
    return bg


def make_product_photo(
    category: str,
    seed: int,
    size: tuple[int, int] = (512, 512),
    *,
    shape: str | None = None,
    backdrop: tuple[int, int, int] | None = None,
) -> tuple[bytes, np.ndarray]:
    """``(jpeg_bytes, alpha)``: a product photo and its exact float32 alpha (HxW).

    ``backdrop``: the paper's RGB colour for the ``colored`` category (e.g. a saturated
    green, for spill tests; by default a random one); any other category refuses it."""
    if category not in CATEGORIES + HARD_CATEGORIES:
        known = ", ".join(CATEGORIES + HARD_CATEGORIES)
        raise ValueError(f"unknown category {category!r}; choose from {known}")
    if backdrop is not None and category != "colored":
        raise ValueError(f"backdrop= sets the 'colored' category's paper, not {category!r}'s")
    rng = np.random.default_rng(seed)
    w, h = size
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    alpha = _shape_mask(shape, w, h, rng)
    bg = _background(category, w, h, rng, backdrop)
    if category != "textured":  # a soft contact shadow on every seamless backdrop
        ys, xs = np.nonzero(alpha > 0.5)
        if len(ys):
            shadow = np.zeros((h, w), np.float32)
            axes = (int((xs.max() - xs.min()) * 0.6), max(3, h // 40))
            cv2.ellipse(shadow, (int(xs.mean()), int(ys.max())), axes, 0, 0, 360, 1.0, -1)
            shadow = cv2.GaussianBlur(shadow, (0, 0), max(2, h / 60))
            bg *= (1 - 0.25 * shadow)[..., None]
    light = category == "low_contrast"  # a white product on white
    colour = rng.uniform(225, 240, 3) if light else rng.uniform(30, 220, 3)
    if category == "vignette" and rng.uniform() < 0.5:  # a grey or black product
        colour = np.full(3, rng.uniform(15, 170)) * rng.uniform(0.97, 1.03, 3)
    xx = np.mgrid[0:h, 0:w][1].astype(np.float32)
    shade = 0.8 + 0.35 * np.cos((xx / w - 0.45) * np.pi * 2.2) ** 2
    product = np.clip(colour * shade[..., None], 0, 255)
    out = product * alpha[..., None] + bg * (1 - alpha[..., None])
    img = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(85, 93)))
    return buf.getvalue(), alpha


def make_cutout(
    seed: int,
    size: tuple[int, int] = (1024, 1024),
    *,
    shape: str | None = None,
    texture: float = 4.0,
    compress_level: int = 1,
) -> bytes:
    """An RGBA PNG cutout of one shaded product (a shape of :data:`SHAPES`) with its exact
    anti-aliased alpha; transparent pixels are black, as many matting tools write them.
    ``texture`` is about the standard deviation of the per-pixel grain (0: flat colour)."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    alpha = _shape_mask(shape, w, h, rng)
    colour = rng.uniform(30, 220, 3)
    xx = np.arange(w)
    shade = 0.8 + 0.35 * np.cos((xx / w - 0.45) * np.pi * 2.2) ** 2
    row = np.clip(colour[None, :] * shade[:, None], 0, 255).astype(np.uint8)  # shading along x
    rgb = np.ascontiguousarray(np.broadcast_to(row[None], (h, w, 3)))
    a8 = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
    spread = round(texture * 1.7)  # uniform grain with about this standard deviation
    if spread:
        grain = rng.integers(0, 2 * spread + 1, (h, w), dtype=np.uint8)
        rgb = cv2.add(rgb, cv2.merge([grain, grain, grain]))
        rgb = cv2.subtract(rgb, np.full((h, w, 3), spread, np.uint8))
    out = cv2.cvtColor(cv2.bitwise_and(rgb, rgb, mask=(a8 > 0).view(np.uint8)), cv2.COLOR_RGB2RGBA)
    out[..., 3] = a8
    img = Image.fromarray(out, "RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
