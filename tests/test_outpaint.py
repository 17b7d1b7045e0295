"""Expand: fal's placement rules and a classical fill without a visible seam."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bria_dagster.client.contracts.expand import AspectRatio
from bria_dagster.engine.matte import to_rgba
from bria_dagster.engine.outpaint import Placement, expand_image, plan_expand
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import EngineError


def _photo(size=(320, 400), category="gray_gradient", seed=7):
    jpg, alpha = make_product_photo(category, seed, size)
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")), alpha


# --- placement rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "ratio", "canvas"),
    [
        ((1024, 1280), "1:1", (1280, 1280)),
        ((1000, 1000), "16:9", (1778, 1000)),
        ((1000, 1000), "4:5", (1000, 1250)),
        ((1600, 900), "9:16", (1600, 2845)),
        ((800, 1000), "4:5", (800, 1000)),
    ],
)
def test_aspect_ratio_gives_smallest_canvas_with_original_centred_at_full_resolution(
    size, ratio, canvas
):
    p = plan_expand(size, canvas_size=None, aspect_ratio=ratio)
    assert p.canvas == canvas
    assert p.size == size
    cw, ch = canvas
    assert p.location == ((cw - size[0]) // 2, (ch - size[1]) // 2)
    a, b = (int(v) for v in ratio.split(":"))
    assert abs(cw / ch - a / b) < 1 / min(cw, ch)  # the ratio up to one pixel of rounding


def test_aspect_ratio_wins_over_canvas_size_and_original_geometry():
    p = plan_expand(
        (600, 400),
        canvas_size=(3000, 3000),
        original_image_size=(100, 100),
        original_image_location=(5, 5),
        aspect_ratio="1:1",
    )
    assert p == Placement(canvas=(600, 600), size=(600, 400), location=(0, 100))


def test_canvas_defaults_keep_size_and_centre():
    p = plan_expand((300, 200), canvas_size=(500, 400))
    assert p == Placement(canvas=(500, 400), size=(300, 200), location=(100, 100))


def test_canvas_with_explicit_size_and_location():
    p = plan_expand(
        (300, 200),
        canvas_size=(1000, 800),
        original_image_size=(600, 400),
        original_image_location=(50, 70),
    )
    assert p == Placement(canvas=(1000, 800), size=(600, 400), location=(50, 70))


def test_negative_location_partly_outside_is_cropped():
    p = plan_expand(
        (200, 100),
        canvas_size=(300, 300),
        original_image_size=(200, 100),
        original_image_location=(-50, 250),
    )
    assert p.location == (-50, 250)
    assert p.visible_box == (0, 250, 150, 300)
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]  # column index in red
    out = expand_image(img, p)
    assert out.shape == (300, 300, 3)
    # The visible part is the original's columns 50..199, rows 0..49.
    np.testing.assert_array_equal(out[250:300, 0:150], img[0:50, 50:200])


def test_accepts_the_request_models_types():
    # JSON gives lists; the request model gives an AspectRatio enum.
    p = plan_expand((1024, 1280), canvas_size=[1, 1], aspect_ratio=AspectRatio.R1_1)
    assert p.canvas == (1280, 1280)
    p = plan_expand(
        (10, 10),
        canvas_size=[40, 30],
        original_image_size=[20, 20],
        original_image_location=[-5, 3],
    )
    assert p == Placement(canvas=(40, 30), size=(20, 20), location=(-5, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"canvas_size": (0, 10)},
        {"canvas_size": (10, 10), "original_image_size": (5, -1)},
        {"canvas_size": (10, 10), "original_image_location": ("a", 1)},
        {"canvas_size": (10,)},
    ],
)
def test_malformed_geometry_is_refused(kwargs):
    with pytest.raises(EngineError, match=r"canvas_size|original_image"):
        plan_expand((10, 10), **kwargs)


def test_canvas_size_required_without_aspect_ratio():
    with pytest.raises(EngineError, match="canvas_size"):
        plan_expand((100, 100), canvas_size=None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"canvas_size": (5000, 5000)},
        {"canvas_size": (10000, 2600)},
        {"canvas_size": None, "aspect_ratio": "16:9", "size": (4900, 4900)},
    ],
)
def test_canvases_of_25_megapixels_or_more_are_refused(kwargs):
    size = kwargs.pop("size", (1000, 1000))
    with pytest.raises(EngineError, match="5000x5000"):
        plan_expand(size, **kwargs)


def test_canvas_just_under_the_limit_is_accepted():
    p = plan_expand((1000, 1000), canvas_size=(4999, 5000))
    assert p.canvas == (4999, 5000)


@pytest.mark.parametrize("location", [(500, 0), (0, 400), (-300, 0), (0, -200), (-300, -200)])
def test_original_outside_the_canvas_is_refused(location):
    with pytest.raises(EngineError, match="does not overlap"):
        plan_expand(
            (300, 200),
            canvas_size=(500, 400),
            original_image_size=(300, 200),
            original_image_location=location,
        )


@pytest.mark.parametrize("bad", ["4x5", "0:1", "a:b", "1:2:3"])
def test_malformed_aspect_ratio_is_refused(bad):
    with pytest.raises(EngineError, match="aspect_ratio"):
        plan_expand((100, 100), canvas_size=None, aspect_ratio=bad)


# --- the fill ----------------------------------------------------------------------------------


def _noisy(base: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(base + rng.normal(0, sigma, base.shape) + 0.5, 0, 255).astype(np.uint8)


def _plain(h=200, w=160):
    return _noisy(np.full((h, w, 3), (180, 140, 90), np.float64), 1.5, 1)


def _gradient(h=200, w=160, sigma=1.0):
    ramp_x = np.linspace(60, 200, w)[None, :, None]
    ramp_y = np.linspace(0, 40, h)[:, None, None]
    base = np.broadcast_to(ramp_x + ramp_y + np.array([0, 10, 20]), (h, w, 3))
    return _noisy(base.astype(np.float64), sigma, 2)


def _clean_gradient():
    return _gradient(sigma=0.0)


def _max_step(a: np.ndarray, axis: int) -> float:
    return float(np.abs(np.diff(a.astype(np.int32), axis=axis)).max())


@pytest.mark.parametrize("make", [_plain, _gradient, _clean_gradient])
def test_no_visible_seam_on_plain_and_gradient_backgrounds(make):
    img = make()
    h, w = img.shape[:2]
    p = plan_expand((w, h), canvas_size=(w + 120, h + 100))
    out = expand_image(img, p, seed=3)
    x0, y0, x1, y1 = p.visible_box
    np.testing.assert_array_equal(out[y0:y1, x0:x1], img)  # the original is kept exactly
    within_cols, within_rows = _max_step(img, 1), _max_step(img, 0)
    tolerance = 2  # grey levels
    # Steps across each seam line are no larger than steps inside the original.
    for left, right in ((out[y0:y1, x0 - 1], out[y0:y1, x0]), (out[y0:y1, x1 - 1], out[y0:y1, x1])):
        step = np.abs(left.astype(np.int32) - right.astype(np.int32)).max()
        assert step <= within_cols + tolerance
    for up, down in ((out[y0 - 1, x0:x1], out[y0, x0:x1]), (out[y1 - 1, x0:x1], out[y1, x0:x1])):
        step = np.abs(up.astype(np.int32) - down.astype(np.int32)).max()
        assert step <= within_rows + tolerance
    # Steps anywhere in the new area stay at the original's noise-and-slope level.
    assert _max_step(out, 1) <= within_cols + 3 * tolerance
    assert _max_step(out, 0) <= within_rows + 3 * tolerance
    # Each new strip continues the colour of the border it grows from.
    strips = {
        "left": (out[y0:y1, :x0], img[:, :4]),
        "right": (out[y0:y1, x1:], img[:, -4:]),
        "top": (out[:y0, x0:x1], img[:4]),
        "bottom": (out[y1:, x0:x1], img[-4:]),
    }
    for name, (new, border) in strips.items():
        if make is _plain or name in ("top", "bottom"):
            diff = np.abs(new.reshape(-1, 3).mean(0) - border.reshape(-1, 3).mean(0))
            assert diff.max() <= 3, name
    if make is not _plain:  # a horizontal ramp is extended by its end values, not averaged
        for name in ("left", "right"):
            new, border = strips[name]
            diff = np.abs(new.reshape(-1, 3).mean(0) - border.reshape(-1, 3).mean(0))
            assert diff.max() <= 4, name


def test_fill_has_the_border_noise_level():
    img = _plain()
    p = plan_expand((160, 200), canvas_size=(560, 200))
    out = expand_image(img, p, seed=0).astype(np.float32)
    far = out[:, :100]  # well away from the seam
    ratio = far.std(axis=(0, 1)).mean() / img.astype(np.float32).std(axis=(0, 1)).mean()
    assert 0.5 <= ratio <= 1.5


def test_fill_is_seeded_and_deterministic():
    img, _ = _photo()
    p = plan_expand((320, 400), canvas_size=None, aspect_ratio="16:9")
    a, b, c = (expand_image(img, p, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resize_to_original_image_size():
    img, _ = _photo()
    p = plan_expand((320, 400), canvas_size=(400, 400), original_image_size=(160, 200))
    out = expand_image(img, p)
    assert out.shape == (400, 400, 3)
    x0, y0, x1, y1 = p.visible_box
    expected = np.asarray(Image.fromarray(img).resize((160, 200), Image.Resampling.BOX))
    assert np.abs(out[y0:y1, x0:x1].astype(int) - expected.astype(int)).mean() < 2


def test_rgba_keeps_original_alpha_and_new_area_is_transparent():
    img, alpha = _photo()
    rgba = to_rgba(img, alpha)
    p = plan_expand((320, 400), canvas_size=None, aspect_ratio="1:1")
    out = expand_image(rgba, p, seed=1)
    assert out.shape == (400, 400, 4) and out.dtype == np.uint8
    x0, y0, x1, y1 = p.visible_box
    np.testing.assert_array_equal(out[y0:y1, x0:x1, 3], rgba[..., 3])
    new_area = np.ones((400, 400), bool)
    new_area[y0:y1, x0:x1] = False
    assert (out[..., 3][new_area] == 0).all()


def test_no_fill_needed_returns_the_original():
    img, _ = _photo()
    p = plan_expand((320, 400), canvas_size=None, aspect_ratio="4:5")
    np.testing.assert_array_equal(expand_image(img, p), img)


def test_bad_array_or_seed_is_refused():
    placement = Placement((20, 20), (10, 10), (5, 5))
    with pytest.raises(EngineError, match="uint8"):
        expand_image(np.zeros((10, 10), np.uint8), placement)
    with pytest.raises(EngineError, match="seed"):
        expand_image(np.zeros((10, 10, 3), np.uint8), placement, seed=-1)


def test_large_canvas_is_filled_smoothly_across_tiles():
    img = _plain(120, 100)
    p = plan_expand((100, 120), canvas_size=(2100, 1900), original_image_location=(1500, 40))
    out = expand_image(img, p, seed=8)
    assert out.shape == (1900, 2100, 3)
    x0, y0, x1, y1 = p.visible_box
    np.testing.assert_array_equal(out[y0:y1, x0:x1], img)
    assert np.abs(out.reshape(-1, 3).mean(0) - img.reshape(-1, 3).mean(0)).max() <= 2
    assert _max_step(out, 1) <= _max_step(img, 1) + 6
    assert _max_step(out, 0) <= _max_step(img, 0) + 6


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1)])
@pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1"])
def test_tiny_and_thin_originals(size, ratio):
    img = np.full((size[1], size[0], 4), 90, np.uint8)
    p = plan_expand(size, canvas_size=None, aspect_ratio=ratio)
    out = expand_image(img, p, seed=0)
    assert out.shape == (p.canvas[1], p.canvas[0], 4)
    assert np.abs(out[..., :3].astype(int) - 90).max() <= 3  # grain at most
