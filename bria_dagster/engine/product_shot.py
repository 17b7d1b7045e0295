"""Product shots for the local ``product_shot`` endpoint: the product placed in a scene.

The cutout is placed on a generated scene (a studio backdrop in the colours and material
of the scene description, or the reference photo cover-fitted) the way fal's
``placement_type`` says: where it stood (``original``), at one of ten positions on a
``shot_size`` canvas (``manual_placement``; ``automatic`` gives all ten), or with a given
padding around it (``manual_padding``). Built on :mod:`bria_dagster.engine.scene`; the
same inputs and seed give the same bytes.
"""

from __future__ import annotations

import math

import numpy as np

from bria_dagster.errors import EngineError

from .scene import SubjectPlacement, render_scene, subject_box

__all__ = ["PLACEMENTS", "product_shots"]

PLACEMENTS = {
    "upper_left": (0.0, 0.0),
    "upper_right": (1.0, 0.0),
    "bottom_left": (0.0, 1.0),
    "bottom_right": (1.0, 1.0),
    "right_center": (1.0, 0.5),
    "left_center": (0.0, 0.5),
    "upper_center": (0.5, 0.0),
    "bottom_center": (0.5, 1.0),
    # fal's docs do not tell these two apart in pixels: both centre the product.
    "center_vertical": (0.5, 0.5),
    "center_horizontal": (0.5, 0.5),
}
"""fal's ``manual_placement_selection`` values, in fal's order, as where the product's box
sits on the canvas (0: left/top edge, 1: right/bottom edge); ``automatic`` uses all ten."""

_FILL = 0.6  # the product's box takes at most this share of the canvas, each way
_MARGIN = 0.05  # the gap kept to the canvas edge, as a share of its short side
_ORIGINAL_PIXELS = 1_000_000  # original placement without original_quality: about 1 MP


def _on_canvas(
    box: tuple[int, int, int, int], size: tuple[int, int], anchor: tuple[float, float]
) -> SubjectPlacement:
    """The product's box scaled to fit ``_FILL`` of the canvas, at ``anchor``."""
    x0, y0, x1, y1 = box
    w, h = size
    scale = _FILL * min(w / (x1 - x0), h / (y1 - y0))
    margin = _MARGIN * min(w, h)
    left = margin + anchor[0] * (w - 2 * margin - scale * (x1 - x0))
    top = margin + anchor[1] * (h - 2 * margin - scale * (y1 - y0))
    return SubjectPlacement(
        scale=scale,
        offset=(left - scale * x0, top - scale * y0),
        ground_y=top + scale * (y1 - y0),
    )


def _layouts(
    cutout_size: tuple[int, int],
    box: tuple[int, int, int, int],
    *,
    placement_type: str,
    shot_size: tuple[int, int],
    manual_placement_selection: str,
    padding_values: tuple[int, int, int, int] | None,
    original_quality: bool,
) -> list[tuple[SubjectPlacement, tuple[int, int]]]:
    """Each output's placement and canvas size (before the ``num_results`` repeats)."""
    if placement_type == "original":
        w, h = cutout_size
        factor = 1.0 if original_quality else math.sqrt(_ORIGINAL_PIXELS / (w * h))
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        return [(SubjectPlacement(factor, (0.0, 0.0), box[3] * factor), size)]
    if placement_type == "manual_padding":
        if padding_values is None:
            raise EngineError("placement_type manual_padding needs padding_values")
        left, right, top, bottom = padding_values
        x0, y0, x1, y1 = box
        size = (left + (x1 - x0) + right, top + (y1 - y0) + bottom)
        return [(SubjectPlacement(1.0, (left - x0, top - y0), top + (y1 - y0)), size)]
    if placement_type == "automatic":
        anchors = list(PLACEMENTS.values())
    elif placement_type == "manual_placement":
        anchors = [PLACEMENTS[manual_placement_selection]]
    else:
        raise EngineError(
            f"placement_type {placement_type!r} is not one of original, "
            "automatic, manual_placement, manual_padding"
        )
    return [(_on_canvas(box, shot_size, anchor), shot_size) for anchor in anchors]


def product_shots(
    cutout: np.ndarray,
    *,
    scene_description: str | None = None,
    reference: np.ndarray | None = None,
    placement_type: str = "manual_placement",
    shot_size: tuple[int, int] = (1000, 1000),
    manual_placement_selection: str = "bottom_center",
    padding_values: tuple[int, int, int, int] | None = None,
    original_quality: bool = False,
    num_results: int = 1,
    seed: int,
    max_pixels: int = 50_000_000,
) -> list[np.ndarray]:
    """The product shots of one request (RGB uint8 arrays): ``num_results`` per placement,
    placements in fal's order (ten for ``automatic``, one otherwise).

    Give exactly one of ``scene_description`` or ``reference`` (an RGB photo).
    """
    if cutout.dtype != np.uint8 or cutout.ndim != 3 or cutout.shape[2] != 4:
        raise EngineError(f"the cutout must be uint8 HxWx4 RGBA, got {cutout.dtype} {cutout.shape}")
    if (scene_description is None) == (reference is None):
        raise EngineError("a product shot needs exactly one of a scene description or a reference")
    box = subject_box(cutout[..., 3].astype(np.float32) / 255.0)
    layouts = _layouts(
        (cutout.shape[1], cutout.shape[0]),
        box,
        placement_type=placement_type,
        shot_size=shot_size,
        manual_placement_selection=manual_placement_selection,
        padding_values=padding_values,
        original_quality=original_quality,
    )
    shots = []
    for i, (place, (w, h)) in enumerate(layouts):
        if w * h > max_pixels:
            raise EngineError(
                f"the product shot would be {w}x{h} = {w * h:,} pixels, over this backend's "
                f"max_pixels={max_pixels:,}; give a smaller shot_size or padding"
            )
        for result in range(num_results):
            shots.append(
                render_scene(
                    cutout,
                    place,
                    (w, h),
                    prompt=scene_description,
                    reference=reference,
                    seed=seed,
                    variant=i * num_results + result,
                )
            )
    return shots
