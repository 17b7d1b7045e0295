"""Background replacement: placement, reference composite, prompt backdrops, determinism."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from bria_dagster.engine.matte import to_rgba
from bria_dagster.engine.scene import (
    COLOR_WORDS,
    MATERIAL_WORDS,
    PROMPT_WORDS,
    parse_prompt_palette,
    plan_subject,
    replace_background,
)
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import EngineError


def _cutout(size=(320, 256), seed=11, shape="bottle", category="white_studio") -> np.ndarray:
    jpg, alpha = make_product_photo(category, seed, size, shape=shape)
    rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    return to_rgba(rgb, alpha)


def _grey_cutout(size=(320, 256)) -> np.ndarray:
    cut = _cutout(size)
    cut[..., :3] = 128
    return cut


def _solid(colour, size=(500, 300)) -> np.ndarray:
    w, h = size
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def _subject_mask(cutout: np.ndarray, seed: int, variant: int = 0) -> np.ndarray:
    """Output pixels fully covered by the subject (eroded away from the resampled edge)."""
    h, w = cutout.shape[:2]
    place = plan_subject(cutout[..., 3].astype(np.float32) / 255, seed=seed, variant=variant)
    warped = cv2.warpAffine(cutout, place.matrix(), (w, h), flags=cv2.INTER_LINEAR)
    solid = (warped[..., 3] == 255).astype(np.uint8)
    return cv2.erode(solid, np.ones((5, 5), np.uint8)).astype(bool), warped


# --- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["prompt", "reference"])
def test_sizes_dtype_and_count(mode):
    cut = _cutout((300, 200))
    kwargs = {"prompt": "beige linen"} if mode == "prompt" else {"reference": _solid((9, 99, 9))}
    images = replace_background(cut, seed=1, num_images=3, **kwargs)
    assert len(images) == 3
    for image in images:
        assert image.shape == (200, 300, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("mode", ["prompt", "reference"])
def test_same_seed_same_bytes_other_seed_or_variant_differs(mode):
    cut = _cutout()
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 255, (240, 400, 3), dtype=np.uint8)
    kwargs = {"prompt": "green marble"} if mode == "prompt" else {"reference": reference}
    first = replace_background(cut, seed=42, num_images=3, **kwargs)
    again = replace_background(cut, seed=42, num_images=3, **kwargs)
    for a, b in zip(first, again, strict=True):
        assert a.tobytes() == b.tobytes()
    other = replace_background(cut, seed=43, num_images=1, **kwargs)[0]
    assert not np.array_equal(first[0], other)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[1], first[2])
    # Asking for more images does not change the first ones.
    assert np.array_equal(replace_background(cut, seed=42, **kwargs)[0], first[0])


def test_exactly_one_of_prompt_and_reference():
    cut = _cutout()
    with pytest.raises(EngineError, match="neither"):
        replace_background(cut, seed=0)
    with pytest.raises(EngineError, match="neither"):
        replace_background(cut, prompt="  ", seed=0)
    with pytest.raises(EngineError, match="both"):
        replace_background(cut, prompt="red", reference=_solid((1, 2, 3)), seed=0)


@pytest.mark.parametrize(
    ("cutout", "kwargs", "match"),
    [
        (np.zeros((50, 50, 3), np.uint8), {"prompt": "red"}, "RGBA"),
        (np.zeros((50, 50, 4), np.float32), {"prompt": "red"}, "RGBA"),
        (np.zeros((50, 50, 4), np.uint8), {"prompt": "red"}, "transparent"),
        (None, {"reference": np.zeros((20, 20), np.uint8)}, "reference"),
        (None, {"prompt": "red", "num_images": 0}, "num_images"),
        (None, {"prompt": "red", "seed": -1}, "seed"),
    ],
)
def test_bad_inputs_are_refused(cutout, kwargs, match):
    cutout = _cutout() if cutout is None else cutout
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(EngineError, match=match):
        replace_background(cutout, **kwargs)


# --- placement and compositing -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", ["bottle", "box", "lamp"])
def test_subject_stands_on_a_ground_line_with_a_margin(seed, shape):
    cut = _cutout((256, 320), seed=seed, shape=shape)
    for variant in range(3):
        mask, warped = _subject_mask(cut, seed, variant)
        rows = np.flatnonzero((warped[..., 3] > 5).any(axis=1))
        cols = np.flatnonzero((warped[..., 3] > 5).any(axis=0))
        h, w = cut.shape[:2]
        assert 0.84 * h <= rows[-1] <= 0.91 * h  # bottom on the ground line
        assert rows[0] >= 0.05 * h  # head room
        assert cols[0] >= 0.03 * w and cols[-1] <= 0.97 * w
        assert mask.any()


def test_reference_composite_keeps_the_subject_and_cover_fits_the_reference():
    cut = _cutout()
    colour = (30, 160, 90)
    out = replace_background(cut, reference=_solid(colour), seed=5)[0]
    mask, warped = _subject_mask(cut, 5)
    diff = np.abs(out[mask].astype(int) - warped[..., :3][mask].astype(int))
    assert diff.max() <= 14  # harmonisation moves colours by at most 12 levels
    assert diff.mean() <= 12
    # The reference fills the frame (cover fit): the top corners show its colour.
    for corner in (out[:8, :8], out[:8, -8:]):
        assert np.abs(corner.astype(int) - colour).max() <= 1


def test_reference_of_any_size_is_cover_fitted():
    cut = _cutout((300, 200))
    tall = np.zeros((900, 100, 3), np.uint8)
    tall[:, :, 2] = 200
    out = replace_background(cut, reference=tall, seed=0)[0]
    assert out.shape == (200, 300, 3)
    assert np.abs(out[:6, :6].astype(int) - (0, 0, 200)).max() <= 1


def test_contact_shadow_darkens_the_ground_under_the_subject():
    cut = _cutout()
    out = replace_background(cut, reference=_solid((200, 200, 200)), seed=3)[0].astype(int)
    place = plan_subject(cut[..., 3].astype(np.float32) / 255, seed=3)
    _, warped = _subject_mask(cut, 3)
    row = round(place.ground_y) + 1
    under = np.flatnonzero(warped[row - 3, :, 3] > 128)
    below = out[row, under[len(under) // 2]].mean()
    far = out[row, 2].mean()
    assert far >= 198
    assert below <= far - 10


def test_harmonisation_nudges_the_subject_toward_the_scene():
    cut = _grey_cutout()
    out = replace_background(cut, reference=_solid((230, 40, 40)), seed=2)[0].astype(int)
    mask, _ = _subject_mask(cut, 2)
    subject = out[mask].mean(axis=0)
    assert subject[0] > 128 + 5  # redder
    assert subject[1] < 128 - 5
    assert np.abs(subject - 128).max() <= 12.5  # but only slightly


# --- prompt backdrops ------------------------------------------------------------------------


def _backdrop_mean(prompt: str, seed: int = 0) -> np.ndarray:
    cut = _cutout()
    out = replace_background(cut, prompt=prompt, seed=seed)[0]
    _mask, warped = _subject_mask(cut, seed)
    return out[warped[..., 3] == 0].reshape(-1, 3).astype(float).mean(axis=0)


def test_red_prompt_is_redder_than_blue_prompt():
    for seed in (0, 1):
        red = _backdrop_mean("a glossy red studio backdrop", seed)
        blue = _backdrop_mean("a glossy blue studio backdrop", seed)
        assert red[0] - red[2] > 60
        assert blue[2] - blue[0] > 60


def test_unknown_words_give_a_neutral_studio():
    palette = parse_prompt_palette("a serene product photo with nice lighting")
    assert palette.words == ()
    assert palette.texture is None
    assert max(palette.wall) - min(palette.wall) <= 10  # grey
    mean = _backdrop_mean("a serene product photo with nice lighting")
    assert np.ptp(mean) <= 12 and mean.mean() > 150


def test_palette_words_tones_and_floor():
    palette = parse_prompt_palette("Pastel PINK wall, teal floor, on marble!")
    assert palette.words == ("pink", "teal", "pastel", "marble")
    assert palette.texture == "marble"
    pink, teal = np.array(COLOR_WORDS["pink"]), np.array(COLOR_WORDS["teal"])
    assert np.mean(palette.wall) > pink.mean()  # pastel: lighter
    assert palette.floor[2] > palette.floor[0]  # the second colour is the floor
    assert np.mean(palette.floor) > teal.mean()
    dark = parse_prompt_palette("dark gray")
    assert np.mean(dark.wall) < np.mean(COLOR_WORDS["gray"])
    wood = parse_prompt_palette("wooden table")
    assert wood.texture == "wood" and wood.wall == MATERIAL_WORDS["wood"][1]


@pytest.mark.parametrize("kind", ["colours", "tones", "materials"])
def test_every_documented_word_is_understood(kind):
    for word in PROMPT_WORDS[kind]:
        assert parse_prompt_palette(f"a {word.upper()} backdrop").words == (word,)


def test_floor_band_and_second_colour():
    cut = _cutout()
    out = replace_background(cut, prompt="blue wall green floor", seed=4)[0].astype(int)
    top, bottom = out[5:20, 5:40].mean(axis=(0, 1)), out[-12:-2, 5:40].mean(axis=(0, 1))
    assert top[2] > top[1]  # blue wall
    assert bottom[1] > bottom[2]  # green floor


@pytest.mark.parametrize("material", ["marble", "wood", "concrete", "linen", "velvet", "sand"])
def test_material_words_add_a_subtle_texture(material):
    cut = np.zeros((256, 256, 4), np.uint8)
    cut[100:140, 110:150] = (90, 90, 90, 255)  # a small subject, far from the sampled corner
    for seed in (1, 9):
        plain = replace_background(cut, prompt="beige", seed=seed)[0].astype(np.float32)
        textured = replace_background(cut, prompt=f"beige {material}", seed=seed)[0]
        texture = (textured.astype(np.float32) - plain)[:100, :100]
        # Structure beyond pixel grain (which a small blur removes), but subtle.
        assert cv2.GaussianBlur(texture, (0, 0), 2).std() > 1.0
        assert texture.std() < 8 and np.abs(texture).max() <= 30


def test_soft_edges_do_not_carry_the_old_background_as_a_halo():
    h, w = 240, 240
    disk = np.zeros((h, w), np.float32)
    cv2.circle(disk, (120, 130), 60, 1.0, -1)
    alpha = cv2.GaussianBlur(disk, (0, 0), 3)  # a wide soft edge
    subject = np.array([200, 80, 20], np.float32)
    photo = subject * alpha[..., None] + 255 * (1 - alpha[..., None])  # shot on white
    cut = to_rgba(np.clip(photo + 0.5, 0, 255).astype(np.uint8), alpha)
    out = replace_background(cut, reference=_solid((0, 0, 0)), seed=1)[0].astype(float)
    _, warped = _subject_mask(cut, 1)
    ring = (warped[..., 3] > 25) & (warped[..., 3] < 230)
    assert ring.sum() > 100
    coverage = warped[..., 3][ring] / 255.0
    # Blue is 20 in the subject and 255 in the old background: no white fringe on black.
    assert (out[..., 2][ring] <= 20 * coverage + 8).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 500), (500, 3), (7, 9)])
@pytest.mark.parametrize("prompt", ["red marble", "wood", "linen", "sand", "concrete", None])
def test_tiny_and_thin_cutouts(shape, prompt):
    cut = np.full((*shape, 4), 200, np.uint8)
    kwargs = {"prompt": prompt} if prompt else {"reference": _solid((5, 5, 5), (5, 5))}
    images = replace_background(cut, seed=1, num_images=2, **kwargs)
    assert [i.shape for i in images] == [(*shape, 3)] * 2
