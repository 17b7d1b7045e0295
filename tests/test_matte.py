"""Classical matte on synthetic studio photos with exact ground truth."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from bria_dagster.engine.matte import remove_background, to_rgba
from bria_dagster.engine.synthetic import make_product_photo


def _photo(category: str, seed: int, shape: str | None = None):
    jpg, alpha = make_product_photo(category, seed, (384, 384), shape=shape)
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")), alpha


def _scores(category: str, seeds: range) -> tuple[float, float]:
    ious, maes = [], []
    for seed in seeds:
        rgb, gt = _photo(category, seed)
        alpha = remove_background(rgb)
        pred, truth = alpha >= 0.5, gt >= 0.5
        ious.append((pred & truth).sum() / max(1, (pred | truth).sum()))
        maes.append(np.abs(alpha - gt).mean())
    return float(np.mean(ious)), float(np.mean(maes))


@pytest.mark.parametrize("category", ["white_studio", "gray_gradient", "colored"])
def test_studio_quality_on_held_out_seeds(category):
    iou, mae = _scores(category, range(5000, 5006))  # never used while tuning
    assert iou >= 0.97
    assert mae <= 0.01


def test_white_product_on_white_is_found_from_its_outline():
    # Best effort: the colour difference is tiny, the sharp outline is not.
    iou, mae = _scores("low_contrast", range(5000, 5006))
    assert iou >= 0.45
    assert mae <= 0.1


@pytest.mark.parametrize("seed", [5001, 5003])
def test_edge_band_alpha_matches_the_anti_aliased_truth(seed):
    rgb, gt = _photo("white_studio", seed)
    alpha = remove_background(rgb)
    edge = (gt > 0.02) & (gt < 0.98)  # partly covered pixels only
    assert edge.sum() > 100
    # Far better than any binary mask could do on these pixels.
    binary_error = np.abs((alpha[edge] >= 0.5) - gt[edge]).mean()
    assert np.abs(alpha[edge] - gt[edge]).mean() < min(0.1, binary_error / 2)


def test_shape_dtype_soft_edges_and_determinism():
    rgb, _ = _photo("white_studio", 3)
    alpha = remove_background(rgb)
    assert alpha.shape == rgb.shape[:2] and alpha.dtype == np.float32
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 50  # anti-aliased, not binary
    assert np.array_equal(alpha, remove_background(rgb))
    assert to_rgba(rgb, alpha).shape == (*rgb.shape[:2], 4)


@pytest.mark.parametrize("category", ["white_studio", "colored"])
def test_contact_shadow_is_background(category):
    rgb, gt = _photo(category, 11, shape="box")
    alpha = remove_background(rgb)
    ys, xs = np.nonzero(gt > 0.5)
    below = alpha[ys.max() + 8 : ys.max() + 16, xs.min() : xs.max()]  # inside the shadow
    assert below.mean() < 0.05


def test_mug_handle_hole_stays_transparent():
    rgb, gt = _photo("gray_gradient", 21, shape="mug")
    alpha = remove_background(rgb)
    hole = gt < 0.01
    # The enclosed hole: background pixels surrounded by the handle.
    inv = (gt < 0.5).astype(np.uint8)
    count, labels = cv2.connectedComponents(inv, connectivity=4)
    border_labels = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    enclosed = [lbl for lbl in range(1, count) if lbl not in border_labels]
    assert enclosed, "the synthetic mug must have a handle hole"
    region = (labels == enclosed[0]) & hole
    assert alpha[region].mean() < 0.2
