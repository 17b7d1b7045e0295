"""Backdrop colour spill along a cutout's edge: the local remove keeps the backdrop in the
edge's colour, the ``spill`` compliance rule measures it on the packshot, and the renderer
takes it out (``decontaminate``, on by default).

Photos: ``engine.synthetic.make_product_photo`` on a saturated backdrop (``colored`` with
``backdrop=``) and the demo's HG-103 (green backdrop), cut out by the local engine's matte
(what the local remove step runs).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bria_dagster.cli.samples import sample_alpha
from bria_dagster.engine import matte
from bria_dagster.engine.synthetic import make_cutout, make_product_photo
from bria_dagster.packshot import ChannelPreset, check_packshot, render_packshot, resolve_preset
from bria_dagster.packshot.compliance import SPILL_MAX, _background_mask
from bria_dagster.packshot.spill import backdrop_colour, decontaminate, spill_share

GREEN = (30, 190, 70)
RED = (200, 30, 40)
AMAZON = resolve_preset("amazon_main")
RAW = AMAZON.model_copy(update={"name": "amazon_raw", "decontaminate": False})
TRANSPARENT = ChannelPreset(
    name="transparent_png", width=1000, height=1000, format="png", allow_alpha=True
)


def local_cutout(jpeg: bytes) -> bytes:
    """The local remove step's cutout of a photo: the matte as alpha, the photo as RGB."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(matte.to_rgba(rgb, matte.remove_background(rgb))).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cutouts() -> dict[tuple[int, int, int], bytes]:
    return {
        GREEN: local_cutout(
            make_product_photo("colored", 2, (640, 640), shape="box", backdrop=GREEN)[0]
        ),
        RED: local_cutout(
            make_product_photo("colored", 4, (640, 640), shape="bottle", backdrop=RED)[0]
        ),
    }


def rgba_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def measured_spill(shot: bytes, cutout: bytes, preset: ChannelPreset) -> float:
    """spill_share of a packshot (flattened onto the preset's background, as the rule does)."""
    image = Image.open(io.BytesIO(shot)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (*preset.background_rgb, 255))
    rgb = np.asarray(Image.alpha_composite(canvas, image).convert("RGB"))
    background = _background_mask(rgb, None, preset.background_rgb)
    result = spill_share(rgb, background, backdrop_colour(rgba_of(cutout)), preset.background_rgb)
    assert result is not None
    return result[0]


@pytest.mark.parametrize("backdrop", [GREEN, RED], ids=["green", "red"])
def test_the_local_cutout_keeps_the_backdrop_colour_in_its_edge(cutouts, backdrop):
    rgba = rgba_of(cutouts[backdrop])
    estimate = np.array(backdrop_colour(rgba))
    assert np.abs(estimate - backdrop).max() <= 16  # read back from the cutout alone
    alpha = rgba[..., 3]
    edge = rgba[(alpha > 8) & (alpha < 200)][:, :3].astype(float).mean(axis=0)
    inside = rgba[alpha == 255][:, :3].astype(float).mean(axis=0)
    # the semi-transparent edge is closer to the backdrop than the product is
    assert np.linalg.norm(edge - backdrop) < 0.75 * np.linalg.norm(inside - backdrop)


@pytest.mark.parametrize("backdrop", [GREEN, RED], ids=["green", "red"])
@pytest.mark.parametrize("preset", [AMAZON, TRANSPARENT], ids=["jpeg", "transparent_png"])
def test_spill_fails_the_check_without_decontamination_and_passes_with_it(
    cutouts, backdrop, preset
):
    cutout = cutouts[backdrop]
    raw = preset.model_copy(update={"name": f"{preset.name}_raw", "decontaminate": False})
    raw_shot = render_packshot(cutout, raw).data
    issues = check_packshot(raw_shot, raw, cutout=cutout)
    assert [issue.rule for issue in issues] == ["spill"]
    spill = issues[0]
    assert spill.measured > SPILL_MAX
    assert spill.measured == round(measured_spill(raw_shot, cutout, raw), 4)
    assert spill.message.startswith(f"spill: measured {spill.measured:.4g}, limit <= {SPILL_MAX}")
    assert f"'{raw.name}' packshot" in spill.message and "backdrop colour #" in spill.message

    clean_shot = render_packshot(cutout, preset).data  # decontaminate=True by default
    assert check_packshot(clean_shot, preset, cutout=cutout) == []
    assert measured_spill(clean_shot, cutout, preset) < SPILL_MAX / 2


def test_the_demo_hg103_amazon_main_packshot_loses_its_green_edge():
    cutout = local_cutout(sample_alpha("HG-103")[0])
    raw = render_packshot(cutout, RAW).data
    assert [issue.rule for issue in check_packshot(raw, RAW, cutout=cutout)] == ["spill"]
    assert measured_spill(raw, cutout, RAW) > 0.3
    shot = render_packshot(cutout, AMAZON).data
    assert check_packshot(shot, AMAZON, cutout=cutout) == []
    assert measured_spill(shot, cutout, AMAZON) < SPILL_MAX / 2


def test_decontaminate_replaces_the_backdrop_part_and_keeps_other_edge_colours():
    product, green, rim = np.array([120, 100, 90]), np.array(GREEN), np.array([20, 20, 20])
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[..., :3] = green  # the photo's backdrop, transparent
    rgba[20:40, 20:40] = (*product, 255)
    rgba[19:41, 19] = (*((product + green) // 2), 160)  # left edge: half backdrop
    rgba[19:41, 40] = (*rim, 160)  # right edge: a dark rim, not backdrop
    out = decontaminate(rgba, backdrop_colour(rgba))
    assert np.array_equal(out[..., 3], rgba[..., 3])  # alpha is never changed
    assert np.abs(out[22:38, 19, :3].astype(int) - product).max() <= 2
    assert np.array_equal(out[22:38, 40], rgba[22:38, 40])
    assert np.array_equal(out[25:35, 25:35], rgba[25:35, 25:35])  # the interior is kept


def test_a_grey_or_absent_backdrop_leaves_the_cutout_as_it_is():
    white = rgba_of(local_cutout(make_product_photo("white_studio", 3, (320, 320))[0]))
    assert decontaminate(white, backdrop_colour(white)) is white
    assert decontaminate(white, None) is white
    # transparent pixels filled with black: the backdrop is read from the faint edge, which
    # here is the product's own colour, so nothing moves and the packshot passes
    clean = make_cutout(5, (512, 512))
    rgba = rgba_of(clean)
    out = decontaminate(rgba, backdrop_colour(rgba))
    assert np.abs(out.astype(int) - rgba).max() <= 2
    assert check_packshot(render_packshot(clean, AMAZON).data, AMAZON, cutout=clean) == []
