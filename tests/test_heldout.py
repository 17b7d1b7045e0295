"""The held-out photo generator of benchmarks/local_quality.py (the heldout extra, in dev)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from bria_dagster.engine.heldout import ICONS, KINDS, TEXTURES, make_heldout_photo


def test_every_icon_renders():
    import material_design_icons_pack as mdi

    assert all(mdi.get_icon(name) is not None for name in ICONS)


@pytest.mark.parametrize("kind", KINDS)
def test_photo_alpha_and_determinism(kind):
    jpg, alpha, info = make_heldout_photo(kind, 3, 192)
    rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    assert rgb.shape == (192, 192, 3) and alpha.shape == (192, 192)
    assert alpha.dtype == np.float32 and alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert 0.03 < (alpha >= 0.5).mean() < 0.6  # a product, not the frame
    assert ((alpha > 0.05) & (alpha < 0.95)).any()  # anti-aliased edges
    assert 85 <= int(info["quality"]) <= 95
    assert (info["texture"] in TEXTURES) == (kind == "textured")
    again, alpha2, _ = make_heldout_photo(kind, 3, 192)
    assert again == jpg and np.array_equal(alpha, alpha2)


def test_icons_have_holes():
    _, alpha, _ = make_heldout_photo("white_studio", 0, 256, icon="key")
    inverse = (alpha < 0.5).astype(np.uint8)
    count, _ = cv2.connectedComponents(inverse, connectivity=4)
    assert count >= 3  # the background plus at least one enclosed hole


@pytest.mark.parametrize("texture", TEXTURES)
def test_textured_backdrops_differ(texture):
    jpg, _, info = make_heldout_photo("textured", 1, 128, texture=texture)
    assert info["texture"] == texture
    rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(np.float32)
    assert rgb[:8].std() > 2.0  # busy border
