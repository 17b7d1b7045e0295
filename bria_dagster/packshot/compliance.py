"""Checking a packshot file against a channel preset, from its bytes alone.

:func:`check_packshot` decodes the file and measures; it trusts nothing the renderer
reported, so it checks any file (a packshot made elsewhere, an old export). Each
failed rule gives one :class:`ComplianceIssue`; an empty list means compliant.

Rules on the file:

``max_bytes``         file size <= ``preset.max_bytes`` (when set).
``format``            the decoded format is the preset's (JPEG/PNG/WebP); undecodable
                      data fails here and stops the pixel rules.
``color_space``       mode RGB or RGBA, and an embedded ICC profile (if any) is sRGB;
                      no profile counts as sRGB.
``alpha``             an alpha channel (or palette transparency) when the preset does not
                      allow alpha.
``min_long_side``     ``max(width, height) >= preset.min_long_side``.
``background_purity`` in the border strip (the outer :data:`BORDER_SHARE` of the shorter
                      side, on all four sides) at least :data:`PURITY_MIN` of the pixels
                      are the background colour within :data:`BACKGROUND_TOLERANCE` per
                      channel (or transparent, when alpha is allowed). Fails on a product,
                      shadow or halo reaching the edge, or on another background colour.
``fill``              the bounding box of the non-background pixels (rows/columns with at
                      least 0.1% of their pixels off the background, so JPEG specks do not
                      count) spans ``max(box_w / W, box_h / H)`` within
                      ``[min_fill, max_fill]``. A contact shadow counts as non-background
                      (it may add about 1% to the height), and a product the colour of the
                      background is invisible to this measurement.

Rules on the cutout (when ``cutout=`` is given; product pixels: alpha > 8/255):

``empty_cutout``          product pixels cover less than :data:`EMPTY_SHARE` of the cutout.
``product_touches_edge``  the product's bounding box touches the cutout's own edge: the
                          product is probably cut off in the source photo.
``halo``                  the fringe around the product (left-over backdrop, e.g. a
                          grey ring) is on average wider than :data:`HALO_MAX` of the
                          product's longer side. Fringe pixels: 8 < alpha < 230, outside the
                          product's opaque core (holes filled), visible over the background
                          (alpha x colour difference above the tolerance) and flat (alpha
                          changes by less than :data:`HALO_SLOPE` levels per px): a plateau
                          of partial alpha, not the ramp of an anti-aliased or soft edge.
                          Width = fringe pixels / perimeter of the core. Not measured when the
                          product has no opaque core (clear glass, say).
``spill``                 the backdrop's colour shows along the product's edge on the packshot
                          (a green rim from a green backdrop): the share of the product's
                          outline on the packshot whose edge band is tinted by the backdrop
                          colour is above :data:`SPILL_MAX`. The backdrop colour is read from
                          the cutout (:func:`~.spill.backdrop_colour`); each edge-band pixel's
                          chroma is split into the local product colour, the backdrop colour
                          and the packshot background (least squares), and it is tinted when
                          the backdrop's share is at least :data:`~.spill.SPILL_TINT` (15%)
                          and shifts it 12 levels or more off the product-background line;
                          an outline pixel counts when a quarter of the band near it is
                          tinted (:func:`~.spill.spill_share`). Not measured where the
                          backdrop is too close in chroma to the product or the background
                          to tell (a grey backdrop: that ring is the ``halo`` rule's), or
                          when the cutout holds no trace of it.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..client.images import MAX_PIXELS_DEFAULT
from ..errors import ImageDecodeError
from .cutout import ALPHA_THRESHOLD, is_srgb_profile, load_cutout
from .presets import ChannelPreset
from .spill import backdrop_colour, spill_share

__all__ = [
    "BACKGROUND_TOLERANCE",
    "BORDER_SHARE",
    "EMPTY_SHARE",
    "HALO_MAX",
    "HALO_SLOPE",
    "PURITY_MIN",
    "SPILL_MAX",
    "ComplianceIssue",
    "check_packshot",
]

BORDER_SHARE = 0.02
"""Width of the border strip background_purity looks at, as a share of the shorter side."""
BACKGROUND_TOLERANCE = 10
"""Largest per-channel difference (0..255) of a pixel still counted as background."""
PURITY_MIN = 0.995
"""Share of border-strip pixels that must be background."""
EMPTY_SHARE = 0.005
"""A cutout whose product pixels cover less than this share of its area is empty."""
HALO_MAX = 0.02
"""Largest mean width of the visible semi-transparent fringe, as a share of the product's
longer side."""
HALO_SLOPE = 8
"""A semi-transparent pixel whose alpha changes by less than this per px (0..255 scale) is
part of a plateau (left-over backdrop), not of an edge ramp."""
SPILL_MAX = 0.05
"""Largest share of the product's outline on the packshot along which the edge is tinted by
the cutout's backdrop colour (:func:`~.spill.spill_share`)."""
LINE_MIN_SHARE = 0.001
"""A row/column belongs to the product when this share of its pixels is off-background."""

_OPAQUE = 230  # a cutout pixel at or above this alpha is part of the product's opaque core
_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class ComplianceIssue:
    """One failed rule: its name, the measured value, the limit, and a sentence naming all
    three and what to do."""

    rule: str
    measured: float | str
    limit: str
    message: str


def _issue(rule: str, measured: float | str, limit: str, detail: str) -> ComplianceIssue:
    shown = f"{measured:.4g}" if isinstance(measured, float) else str(measured)
    return ComplianceIssue(
        rule, measured, limit, f"{rule}: measured {shown}, limit {limit}: {detail}"
    )


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS_DEFAULT:
            raise ImageDecodeError(
                f"packshot is {image.width}x{image.height}, over the "
                f"{MAX_PIXELS_DEFAULT:,}-pixel limit"
            )
        image.load()
    return image


def _background_mask(rgb: np.ndarray, alpha: np.ndarray | None, bg: tuple[int, ...]) -> np.ndarray:
    """uint8 HxW, 255 where the pixel counts as background."""
    tol = BACKGROUND_TOLERANCE
    lower = np.array([max(0, c - tol) for c in bg], np.uint8)
    upper = np.array([min(255, c + tol) for c in bg], np.uint8)
    inside = cv2.inRange(rgb, lower, upper)
    if alpha is not None:
        transparent = cv2.inRange(alpha, 0, ALPHA_THRESHOLD)
        opaque = cv2.inRange(alpha, 255 - ALPHA_THRESHOLD, 255)
        inside = cv2.bitwise_or(transparent, cv2.bitwise_and(inside, opaque))
    return inside


def _purity(background: np.ndarray) -> tuple[float, int]:
    H, W = background.shape
    s = max(1, math.ceil(BORDER_SHARE * min(W, H)))
    if 2 * s >= min(W, H):
        strips = [background]
    else:
        strips = [background[:s], background[H - s :], background[s : H - s, :s]]
        strips.append(background[s : H - s, W - s :])
    total = sum(strip.size for strip in strips)
    good = sum(cv2.countNonZero(np.ascontiguousarray(strip)) for strip in strips)
    return good / total, s


def _fill(background: np.ndarray) -> tuple[float, tuple[int, int, int, int] | None]:
    H, W = background.shape
    # per-row / per-column count of background pixels (255 each)
    rows = W - cv2.reduce(background, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0] // 255
    cols = H - cv2.reduce(background, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[0] // 255
    row_hits = np.flatnonzero(rows >= max(1, math.ceil(LINE_MIN_SHARE * W)))
    col_hits = np.flatnonzero(cols >= max(1, math.ceil(LINE_MIN_SHARE * H)))
    if not len(row_hits) or not len(col_hits):
        return 0.0, None
    box = (int(col_hits[0]), int(row_hits[0]), int(col_hits[-1]) + 1, int(row_hits[-1]) + 1)
    return max((box[2] - box[0]) / W, (box[3] - box[1]) / H), box


def _file_rules(image: Image.Image, data: bytes, preset: ChannelPreset) -> list[ComplianceIssue]:
    issues: list[ComplianceIssue] = []
    expected = _FORMATS[preset.format]
    if image.format != expected:
        issues.append(
            _issue(
                "format",
                str(image.format),
                expected,
                f"the file decodes as {image.format}, the preset {preset.name!r} wants "
                f"{expected}; re-render it with this preset",
            )
        )
    icc = image.info.get("icc_profile")
    srgb = True if not icc else is_srgb_profile(icc)
    if image.mode not in ("RGB", "RGBA") or srgb is not True:
        profile = "no ICC profile" if not icc else ("sRGB" if srgb else "a non-sRGB ICC profile")
        if srgb is None:
            profile = "an unreadable ICC profile"
        issues.append(
            _issue(
                "color_space",
                f"{image.mode}, {profile}",
                "RGB or RGBA, sRGB",
                "channels show main images as sRGB RGB; convert the file to sRGB "
                "(render_packshot does)",
            )
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha and not preset.allow_alpha:
        issues.append(
            _issue(
                "alpha",
                f"{image.mode} with alpha",
                "no alpha channel",
                f"the preset {preset.name!r} forbids transparency (allow_alpha=False); "
                "flatten the image onto the background",
            )
        )
    long_side = max(image.size)
    if long_side < preset.min_long_side:
        issues.append(
            _issue(
                "min_long_side",
                float(long_side),
                f">= {preset.min_long_side} px",
                f"the image is {image.width}x{image.height}; render it larger "
                f"(the preset's size is {preset.width}x{preset.height})",
            )
        )
    return issues


def _flat_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """The packshot's RGB (HxWx3 uint8) and its alpha (None without one)."""
    rgba = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    arr = np.asarray(image.convert("RGBA" if rgba else "RGB"))
    if not rgba:
        return arr, None
    return cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB), cv2.extractChannel(arr, 3)


def _pixel_rules(
    image: Image.Image, preset: ChannelPreset
) -> tuple[list[ComplianceIssue], tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """The issues, and ``(rgb, alpha, background mask)`` for the spill rule."""
    issues: list[ComplianceIssue] = []
    rgb, alpha = _flat_rgb(image)
    background = _background_mask(rgb, alpha, preset.background_rgb)

    purity, strip = _purity(background)
    if purity < PURITY_MIN:
        issues.append(
            _issue(
                "background_purity",
                round(purity, 4),
                f">= {PURITY_MIN}",
                f"only {purity:.1%} of the {strip}-px border strip is the background "
                f"{preset.background} (+/-{BACKGROUND_TOLERANCE} per channel); the product, "
                "its shadow or a halo reaches the edge, or the background is another colour: "
                "lower fill, check the cutout's edges, or fix the background",
            )
        )
    fill, box = _fill(background)
    if not preset.min_fill <= fill <= preset.max_fill:
        where = f"bounding box {box} on {image.width}x{image.height}" if box else "no product"
        advice = (
            "the product is too small in the frame: raise fill, or check the cutout for "
            "stray pixels far from the product"
            if fill < preset.min_fill
            else "the product is too large in the frame: lower fill"
        )
        issues.append(
            _issue(
                "fill",
                round(fill, 4),
                f">= {preset.min_fill} and <= {preset.max_fill}",
                f"the product spans {fill:.1%} of the frame ({where}); {advice}",
            )
        )
    return issues, (rgb, alpha, background)


def _solid(core: np.ndarray) -> np.ndarray:
    """``core`` (uint8 0/255) with its holes filled."""
    h, w = core.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = core
    flood_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(padded, flood_mask, (0, 0), 128)  # outside -> 128, holes stay 0
    return np.where(padded[1:-1, 1:-1] == 128, 0, 255).astype(np.uint8)


def _halo_width(rgba: np.ndarray, box: tuple[int, int, int, int], bg: tuple[int, ...]):
    """Mean width (px) of the visible semi-transparent fringe outside the opaque core, or
    None when there is no opaque core."""
    left, top, right, bottom = box
    region = rgba[max(0, top - 1) : bottom + 1, max(0, left - 1) : right + 1]
    alpha = np.ascontiguousarray(region[..., 3])
    core = cv2.inRange(alpha, _OPAQUE, 255)
    if not cv2.countNonZero(core):
        return None
    solid = _solid(core)
    perimeter = cv2.countNonZero(solid) - cv2.countNonZero(
        cv2.erode(solid, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    )
    semi = cv2.inRange(alpha, ALPHA_THRESHOLD + 1, _OPAQUE - 1)
    semi = cv2.bitwise_and(semi, cv2.bitwise_not(solid))
    if not cv2.countNonZero(semi):
        return 0.0
    red, green, blue, _ = cv2.split(cv2.absdiff(np.ascontiguousarray(region), (*bg, 0)))
    diff = cv2.max(cv2.max(red, green), blue)
    visible = diff.astype(np.uint16) * alpha > BACKGROUND_TOLERANCE * 255
    # a 3x3 Sobel filter gives 8 x the slope: |gx| + |gy| < 8 * HALO_SLOPE is a plateau
    slope = cv2.add(
        cv2.convertScaleAbs(cv2.Sobel(alpha, cv2.CV_16S, 1, 0)),
        cv2.convertScaleAbs(cv2.Sobel(alpha, cv2.CV_16S, 0, 1)),
    )
    flat = slope < 8 * HALO_SLOPE
    fringe = int(np.count_nonzero(visible & flat & (semi > 0)))
    return fringe / max(1, perimeter)


def _cutout_rules(cutout: bytes | Image.Image, preset: ChannelPreset) -> list[ComplianceIssue]:
    issues: list[ComplianceIssue] = []
    image = load_cutout(cutout)
    rgba = np.asarray(image)
    alpha = np.ascontiguousarray(rgba[..., 3])
    H, W = alpha.shape
    product = cv2.inRange(alpha, ALPHA_THRESHOLD + 1, 255)
    count = cv2.countNonZero(product)
    share = count / (W * H)
    if share < EMPTY_SHARE:
        issues.append(
            _issue(
                "empty_cutout",
                round(share, 6),
                f">= {EMPTY_SHARE} of the cutout area",
                f"only {count} of {W}x{H} cutout pixels have alpha > {ALPHA_THRESHOLD}/255: the "
                "background removal found (almost) no product; check the source photo and "
                "re-run the remove step",
            )
        )
    if not count:
        return issues
    x, y, w, h = cv2.boundingRect(product)
    box = (x, y, x + w, y + h)
    sides = [
        side
        for side, touches in (
            ("left", x == 0),
            ("top", y == 0),
            ("right", x + w == W),
            ("bottom", y + h == H),
        )
        if touches
    ]
    if sides:
        issues.append(
            _issue(
                "product_touches_edge",
                ", ".join(sides),
                "no side of the product's bounding box on the cutout's edge",
                f"the product's bounding box {box} reaches the {', '.join(sides)} edge of the "
                f"{W}x{H} cutout: it is probably cut off in the source photo; use a photo "
                "with room around the product",
            )
        )
    width = _halo_width(rgba, box, preset.background_rgb)
    if width is not None:
        share_of_side = width / max(w, h)
        if share_of_side > HALO_MAX:
            issues.append(
                _issue(
                    "halo",
                    round(share_of_side, 4),
                    f"<= {HALO_MAX} of the product's longer side",
                    f"a visible semi-transparent fringe {width:.1f} px wide on average "
                    f"({share_of_side:.1%} of the product's {max(w, h)} px) surrounds the "
                    "product's opaque core: left-over backdrop from the background removal; "
                    "refine the cutout's matte",
                )
            )
    return issues


def _spill_rule(
    pixels: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    preset: ChannelPreset,
    cutout: Image.Image,
) -> list[ComplianceIssue]:
    backdrop = backdrop_colour(np.asarray(cutout), ALPHA_THRESHOLD)
    if backdrop is None:
        return []
    rgb, alpha, background = pixels
    if alpha is not None:  # seen over the channel's background colour
        canvas = np.empty_like(rgb)
        canvas[:] = preset.background_rgb
        weight = cv2.merge([alpha] * 3)
        rgb = cv2.add(
            cv2.multiply(rgb, weight, scale=1 / 255),
            cv2.multiply(canvas, cv2.bitwise_not(weight), scale=1 / 255),
        )
        background = _background_mask(rgb, None, preset.background_rgb)
    measured = spill_share(rgb, background, backdrop, preset.background_rgb)
    if measured is None or measured[0] <= SPILL_MAX:
        return []
    share, outline = measured
    colour = "#{:02X}{:02X}{:02X}".format(*(round(v) for v in backdrop))
    return [
        _issue(
            "spill",
            round(share, 4),
            f"<= {SPILL_MAX} of the product's outline",
            f"the backdrop colour {colour} of the cutout tints the product's edge along "
            f"{share:.1%} of its outline ({outline} px at the measuring scale) on the "
            f"{preset.name!r} packshot: colour spill from the photo's backdrop; render with "
            "decontaminate=True (the default), or refine the cutout's edge",
        )
    ]


def check_packshot(
    data: bytes, preset: ChannelPreset, *, cutout: bytes | Image.Image | None = None
) -> list[ComplianceIssue]:
    """The rules ``data`` (a packshot file) fails for ``preset``, measured from the decoded
    bytes; with ``cutout``, also the cutout rules (``empty_cutout``,
    ``product_touches_edge``, ``halo``) and ``spill`` (the cutout's backdrop colour on the
    packshot's product edge). An empty list means compliant.

    Undecodable data gives a ``format`` issue (and skips the pixel rules) rather than an
    exception; an undecodable ``cutout`` raises :class:`~bria_dagster.errors.ImageDecodeError`.
    """
    issues: list[ComplianceIssue] = []
    pixels = None
    if preset.max_bytes is not None and len(data) > preset.max_bytes:
        issues.append(
            _issue(
                "max_bytes",
                float(len(data)),
                f"<= {preset.max_bytes} bytes",
                f"the file is {len(data):,} bytes, over the preset {preset.name!r}'s limit of "
                f"{preset.max_bytes:,}; lower quality (render_packshot stops at its quality "
                "floor) or use a smaller size",
            )
        )
    try:
        image = _open(data)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        issues.append(
            _issue(
                "format",
                "undecodable",
                _FORMATS[preset.format],
                f"the {len(data):,} bytes do not decode as an image ({exc}); re-render it",
            )
        )
    else:
        issues += _file_rules(image, data, preset)
        pixel_issues, pixels = _pixel_rules(image, preset)
        issues += pixel_issues
    if cutout is not None:
        cutout = load_cutout(cutout)
        issues += _cutout_rules(cutout, preset)
        if pixels is not None:
            issues += _spill_rule(pixels, preset, cutout)
    return issues
