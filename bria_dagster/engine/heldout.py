"""A second, independent generator of product photos with exact alpha: the HELD-OUT set.

``benchmarks/local_quality.py`` scores the local matte on two sets. The first comes
from ``synthetic.py``, the generator the engine was tuned on. This one is only ever
evaluated: no parameter of the engine was chosen by looking at its images or scores.
It shares no code path with ``synthetic.py``:

* **Foregrounds**: glyphs of the Material Design Icons set (the ``@mdi/svg`` npm
  package, Apache-2.0, as redistributed on PyPI by ``material-design-icons-pack``),
  rendered at generation time by resvg (``resvg-py``) with a random scale, rotation
  and placement. Wine glasses, bicycles, hangers, trophies, keys, kettles...: real
  holes and thin parts, unlike ``synthetic.py``'s four OpenCV-drawn shapes. The
  rendered anti-aliased coverage is the exact alpha. The body gets a random colour
  (cream-white on the low-contrast kind), directional lighting and a soft highlight.
* **Backdrops** (NumPy value noise upsampled with Pillow; no OpenCV):
  ``white_studio`` near-white with fall-off; ``gray_gradient`` a two-tone sweep with a
  radial vignette; ``colored`` coloured paper with fibre grain and a diagonal light;
  ``low_contrast`` a warm off-white sweep under a cream product; ``textured`` one of
  ``wood`` (warped growth rings), ``marble`` (turbulent veins), ``fabric`` (a woven
  thread pattern) and ``bokeh`` (out-of-focus discs of light).
* **Shadows**: a soft contact shadow (a blurred Pillow ellipse) on every kind.
* **Encoding**: OpenCV's JPEG encoder at quality 85-95, 1024 px by default.

Needs the ``heldout`` extra (``pip install "bria-dagster[heldout]"``, included in
``dev``): ``resvg-py`` and ``material-design-icons-pack``. Nothing is downloaded at
run time: the icons are data inside the installed package.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["ICONS", "KINDS", "TEXTURES", "make_heldout_photo"]

KINDS = ("white_studio", "gray_gradient", "colored", "low_contrast", "textured")
TEXTURES = ("wood", "marble", "fabric", "bokeh")
# Product-like glyphs with holes and thin parts (all present in @mdi/svg 7.4).
ICONS = (
    "bottle-wine", "lamp", "desk-lamp", "watch", "headphones", "guitar-acoustic",
    "bicycle", "scissors-cutting", "key", "umbrella", "shoe-heel", "bag-personal",
    "coffee-maker", "kettle", "candle", "chair-rolling", "hanger", "lightbulb", "trophy",
    "pot-mix", "bottle-tonic", "spray-bottle", "watering-can", "hammer", "wrench",
    "glass-wine", "glass-cocktail", "bottle-soda-classic", "mushroom", "cactus",
    "tshirt-crew", "shoe-sneaker", "purse", "camera", "microphone-variant", "lock",
    "bell", "sofa", "table-chair", "flower",
)  # fmt: skip


def _missing(exc: ImportError) -> ImportError:
    return ImportError(
        "the held-out generator needs resvg-py and material-design-icons-pack: "
        'pip install "bria-dagster[heldout]"'
    ).with_traceback(exc.__traceback__)


def _render_icon(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Exact coverage (float32 HxW in [0, 1]) of one icon, placed like a product."""
    try:
        import material_design_icons_pack as mdi
        import resvg_py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise _missing(exc) from exc
    icon = mdi.get_icon(name)
    if icon is None:
        raise ValueError(f"icon {name!r} is not in material-design-icons-pack")
    path = icon.svg.split("<path", 1)[1].rsplit("/>", 1)[0]
    # The glyph spans about 20 of its 24 units: scale it to 45-75% of the frame height.
    scale = size * rng.uniform(0.45, 0.75) / 20.0
    angle = rng.uniform(-12, 12)
    cx = size * rng.uniform(0.42, 0.58)
    cy = size * rng.uniform(0.46, 0.54)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}"><g transform="translate({cx:.2f} {cy:.2f}) '
        f'rotate({angle:.2f}) scale({scale:.4f}) translate(-12 -12)">'
        f'<path fill="#000"{path}/></g></svg>'
    )
    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)
    alpha = np.asarray(Image.open(io.BytesIO(bytes(png))).getchannel("A"), np.float32) / 255.0
    return alpha


def _noise(size: int, cells: int, rng: np.random.Generator, octaves: int = 1) -> np.ndarray:
    """Fractal value noise in about [-1, 1]: random grids upsampled bicubically."""
    total = np.zeros((size, size), np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        n = max(2, cells * 2**octave)
        grid = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        layer = Image.fromarray(grid, "F").resize((size, size), Image.Resampling.BICUBIC)
        total += amp * np.asarray(layer, np.float32)
        norm += amp
        amp *= 0.5
    return total / norm


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    v = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(v, v)  # x, y in (0, 1)


def _hsv(hue: float, sat: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, sat, value), np.float32)


def _studio(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _coords(size)
    r2 = (x - rng.uniform(0.4, 0.6)) ** 2 + (y - rng.uniform(0.3, 0.5)) ** 2
    if kind == "white_studio":
        level = rng.uniform(238, 253) - rng.uniform(4, 14) * r2
        tint = rng.uniform(-2, 2, 3)
        bg = level[..., None] + tint
    elif kind == "low_contrast":
        level = rng.uniform(236, 248) - rng.uniform(3, 10) * r2
        bg = level[..., None] * np.array([1.0, rng.uniform(0.985, 1.0), rng.uniform(0.95, 0.99)])
    elif kind == "gray_gradient":
        top, bottom = rng.uniform(150, 215), rng.uniform(195, 240)
        t = np.clip((y - 0.1) / 0.8, 0, 1)
        sweep = top + (bottom - top) * (3 * t**2 - 2 * t**3)  # smoothstep floor-to-wall
        vignette = 1.0 - rng.uniform(0.15, 0.35) * r2 * 2
        tint = 1.0 + rng.uniform(-0.03, 0.03, 3)
        bg = (sweep * vignette)[..., None] * tint
    else:  # colored paper: fibre grain, a diagonal light
        hue = rng.uniform(0, 1)
        sat, val = rng.uniform(0.35, 0.8), rng.uniform(120, 235)
        rgb = _hsv(hue, sat, val)
        light = 1.0 + rng.uniform(0.04, 0.1) * ((x + y) - 1.0)
        grain = 1.0 + 0.012 * _noise(size, size // 6, rng)
        bg = rgb * (light * grain)[..., None]
    return bg.astype(np.float32)


def _wood(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _coords(size)
    warp = _noise(size, 4, rng, octaves=3)
    if rng.uniform() < 0.5:
        x, y = y, x
    rings = (x * rng.uniform(12, 30) + 1.8 * warp + 0.3 * np.sin(y * 7.0)) % 1.0
    grain = 0.5 + 0.5 * _noise(size, 64, rng)
    light = np.array(rng.uniform([150, 95, 50], [215, 160, 110]), np.float32)
    dark = light * rng.uniform(0.45, 0.7)
    t = (np.abs(rings - 0.5) * 2) ** 1.5 * 0.8 + 0.2 * grain
    return light * (1 - t[..., None]) + dark * t[..., None]


def _marble(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _coords(size)
    turb = np.abs(_noise(size, 3, rng, octaves=5))
    veins = np.abs(np.sin((x * rng.uniform(3, 7) + y * rng.uniform(1, 4) + 4.0 * turb) * np.pi))
    v = veins ** rng.uniform(0.15, 0.35)  # thin dark veins, mostly light stone
    base = np.array(rng.uniform([200, 195, 185], [245, 242, 238]), np.float32)
    vein = base * rng.uniform(0.35, 0.65)
    cloud = 1.0 + 0.04 * _noise(size, 8, rng, octaves=2)
    return (vein * (1 - v[..., None]) + base * v[..., None]) * cloud[..., None]


def _fabric(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _coords(size)
    period = size / rng.uniform(90, 200)
    px, py = x * size / period, y * size / period
    warp_threads = 0.5 + 0.5 * np.sin(px * 2 * np.pi)
    weft_threads = 0.5 + 0.5 * np.sin(py * 2 * np.pi)
    over = (np.floor(px) + np.floor(py)) % 2
    weave = np.where(over > 0, warp_threads, weft_threads)
    hue = rng.uniform(0, 1)
    sat = rng.uniform(60, 180) / 255
    rgb = _hsv(hue, sat, rng.uniform(110, 220))
    slub = 1.0 + 0.08 * _noise(size, 40, rng)
    folds = 1.0 + 0.12 * _noise(size, 3, rng, octaves=2)
    shade = (0.78 + 0.22 * weave) * slub * folds
    return rgb * shade[..., None]


def _bokeh(size: int, rng: np.random.Generator) -> np.ndarray:
    _, y = _coords(size)
    base_a = np.array(rng.uniform(20, 120, 3), np.float32)
    base_b = np.array(rng.uniform(40, 160, 3), np.float32)
    bg = base_a * (1 - y[..., None]) + base_b * y[..., None]
    layer = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(layer, "RGBA")
    palette = rng.uniform(120, 255, (3, 3))
    for _ in range(int(rng.integers(25, 60))):
        r = size * rng.uniform(0.02, 0.09)
        cx, cy = rng.uniform(0, size, 2)
        col = palette[int(rng.integers(3))]
        fill = (*(int(c) for c in col), int(rng.uniform(50, 140)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    layer = layer.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.004, 0.012)))
    return np.clip(bg + np.asarray(layer, np.float32), 0, 255)


def _backdrop(kind: str, texture: str | None, size: int, rng: np.random.Generator):
    if kind != "textured":
        return _studio(kind, size, rng)
    return {"wood": _wood, "marble": _marble, "fabric": _fabric, "bokeh": _bokeh}[texture](
        size, rng
    )


def _product(kind: str, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = alpha.shape[0]
    x, y = _coords(size)
    if kind == "low_contrast":
        colour = np.array(rng.uniform([222, 220, 210], [240, 238, 232]), np.float32)
    else:
        colour = np.array(rng.uniform(15, 235, 3), np.float32)
        colour[int(rng.integers(3))] *= rng.uniform(0.2, 0.8)  # saturated, not grey
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(theta) + (y - 0.5) * np.sin(theta)
    light = 1.0 + rng.uniform(0.15, 0.4) * ramp
    hx = rng.uniform(0.35, 0.65)
    highlight = rng.uniform(0.0, 0.25) * np.exp(-(((x - hx) / 0.04) ** 2))
    surface = 1.0 + 0.02 * _noise(size, 32, rng)
    body = colour * (light * surface)[..., None] + 255.0 * highlight[..., None] * 0.5
    return np.clip(body, 0, 255)


def _contact_shadow(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darkening factor in (0, 1]: a blurred ellipse under the product's lowest part."""
    size = alpha.shape[0]
    rows = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    cols = np.nonzero(alpha.max(axis=0) > 0.5)[0]
    if len(rows) == 0:
        return np.ones_like(alpha)
    bottom = rows.max()
    foot = np.nonzero(alpha[max(rows.min(), bottom - size // 20) : bottom + 1].max(axis=0) > 0.5)[0]
    left, right = (foot.min(), foot.max()) if len(foot) else (cols.min(), cols.max())
    half = max(8, (right - left) * rng.uniform(0.55, 0.8))
    mid = (left + right) / 2
    height = size * rng.uniform(0.015, 0.035)
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).ellipse(
        (mid - half, bottom - height * 0.6, mid + half, bottom + height), fill=255
    )
    layer = layer.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.012, 0.025)))
    depth = rng.uniform(0.2, 0.45)
    return 1.0 - depth * np.asarray(layer, np.float32) / 255.0


def make_heldout_photo(
    kind: str,
    seed: int,
    size: int = 1024,
    *,
    texture: str | None = None,
    icon: str | None = None,
) -> tuple[bytes, np.ndarray, dict[str, str]]:
    """``(jpeg_bytes, alpha, info)``: a square photo, its exact float32 alpha, and what
    was drawn (``icon``, ``texture``, ``quality``). Deterministic per ``(kind, seed)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng([0x4E1D, KINDS.index(kind), seed])
    icon = icon or ICONS[int(rng.integers(len(ICONS)))]
    if kind != "textured":
        texture = None
    elif texture is None:
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    alpha = _render_icon(icon, size, rng)
    bg = _backdrop(kind, texture, size, rng)
    bg = bg * _contact_shadow(alpha, rng)[..., None]
    sensor = rng.normal(0, rng.uniform(0.8, 2.0), bg.shape).astype(np.float32)
    body = _product(kind, alpha, rng)
    a = alpha[..., None]
    out = np.clip(body * a + bg * (1 - a) + sensor, 0, 255).round().astype(np.uint8)
    quality = int(rng.integers(85, 96))
    import cv2  # the encoder only; nothing above is drawn with OpenCV

    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    info = {"icon": icon, "texture": texture or "", "quality": str(quality)}
    return buf.tobytes(), alpha, info
