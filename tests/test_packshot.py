"""Packshots: presets, rendering and compliance checks, on cutouts drawn in code."""

from __future__ import annotations

import io
import json
import struct

import cv2
import numpy as np
import pydantic
import pytest
from PIL import Image, ImageCms, ImageDraw

from bria_dagster.engine.synthetic import make_cutout
from bria_dagster.errors import EmptyCutoutError, PresetError
from bria_dagster.packshot import (
    BUILTIN_PRESETS,
    ChannelPreset,
    ComplianceIssue,
    Packshot,
    check_packshot,
    render_packshot,
    resolve_preset,
)
from bria_dagster.packshot.cutout import is_srgb_profile
from bria_dagster.packshot.encode import QUALITY_FLOOR, jpeg_with_icc


def make_test_cutout(
    size: tuple[int, int] = (600, 600),
    box: tuple[int, int, int, int] = (170, 120, 430, 500),
    colour: tuple[int, int, int] = (190, 60, 40),
    *,
    shape: str = "rounded",
    soft: float = 1.2,
    halo: int = 0,
    halo_alpha: float = 0.35,
    halo_grey: int = 128,
) -> bytes:
    """An RGBA PNG: a product (rounded rectangle or ellipse filling ``box``) with soft alpha
    edges on a transparent canvas whose invisible pixels are black; ``halo`` > 0 adds a
    semi-opaque grey ring that many px wide around it (left-over backdrop)."""
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "ellipse":
        draw.ellipse(box, fill=255)
    else:
        draw.rounded_rectangle(box, radius=(box[2] - box[0]) // 8, fill=255)
    alpha = np.asarray(mask)
    if soft:
        alpha = cv2.GaussianBlur(alpha, (0, 0), soft)
    gradient = np.linspace(0.85, 1.1, w, dtype=np.float32)[None, :, None]
    rgb = np.clip(np.array(colour, np.float32) * gradient, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.broadcast_to(rgb, (h, w, 3)))
    if halo:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * halo + 1, 2 * halo + 1))
        ring = (cv2.dilate((alpha > 8).astype(np.uint8), kernel) > 0) & (alpha < 128)
        rgb[ring] = halo_grey
        alpha = np.where(ring, np.maximum(alpha, round(255 * halo_alpha)), alpha).astype(np.uint8)
    rgb[alpha == 0] = 0
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cutout() -> bytes:
    return make_test_cutout()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def product_box(image: Image.Image, background=(255, 255, 255), tol: int = 10):
    """(left, top, right, bottom) of the pixels that differ from the background."""
    arr = np.asarray(image.convert("RGB")).astype(np.int16)
    off = (np.abs(arr - np.array(background)) > tol).any(axis=2)
    ys, xs = np.nonzero(off)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def preset(**fields) -> ChannelPreset:
    base = {"name": "test", "width": 1000, "height": 1000}
    return ChannelPreset(**{**base, **fields})


def rules(issues: list[ComplianceIssue]) -> list[str]:
    return [issue.rule for issue in issues]


# --- built-in presets --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_PRESETS))
def test_every_builtin_preset_renders_a_packshot_that_passes_its_own_checks(name, cutout):
    channel = BUILTIN_PRESETS[name]
    shot = render_packshot(cutout, channel)

    assert isinstance(shot, Packshot)
    assert check_packshot(shot.data, channel, cutout=cutout) == []
    image = decode(shot.data)
    assert image.size == (channel.width, channel.height) == (shot.width, shot.height)
    assert image.format == "JPEG" and image.mode == "RGB"  # no alpha
    assert (shot.ext, shot.content_type) == ("jpg", "image/jpeg")
    assert is_srgb_profile(image.info["icc_profile"])
    assert shot.fill == pytest.approx(channel.fill, abs=0.002)
    assert shot.quality == channel.quality
    left, top, right, bottom = product_box(image)
    measured = max((right - left) / image.width, (bottom - top) / image.height)
    assert channel.min_fill <= measured <= channel.max_fill
    assert measured == pytest.approx(channel.fill, abs=0.01)
    assert abs((left + right) / 2 - image.width / 2) <= 3  # centred
    assert abs((top + bottom) / 2 - image.height / 2) <= 3


def test_builtin_presets_name_their_sources_and_follow_the_published_main_rules():
    for name, channel in BUILTIN_PRESETS.items():
        assert channel.name == name
        assert channel.source.startswith("https://"), name
        assert "2026" in channel.source, name
    amazon = BUILTIN_PRESETS["amazon_main"]
    assert amazon.background == "#FFFFFF" and amazon.format == "jpeg"
    assert amazon.min_fill >= 0.85 and amazon.min_long_side >= 1000
    assert amazon.max_bytes == 10_000_000
    assert (BUILTIN_PRESETS["shopify"].width, BUILTIN_PRESETS["shopify"].height) == (2048, 2048)
    assert BUILTIN_PRESETS["ebay"].min_long_side == 500


def test_a_synthetic_product_cutout_passes_too():
    data = make_cutout(5, (512, 512), texture=0)
    channel = BUILTIN_PRESETS["ebay"]
    assert check_packshot(render_packshot(data, channel).data, channel, cutout=data) == []


def test_a_pil_image_is_accepted_and_gives_the_same_file(cutout):
    channel = preset()
    image = decode(cutout)
    assert render_packshot(image, channel).data == render_packshot(cutout, channel).data


# --- geometry ----------------------------------------------------------------------------


def test_fill_is_the_limiting_side_of_the_product_box_over_the_canvas():
    wide = make_test_cutout(size=(600, 400), box=(100, 150, 500, 250), soft=0)  # 400 x 100
    channel = preset(width=1600, height=800, fill=0.5, format="png")
    image = decode(render_packshot(wide, channel).data)
    left, top, right, bottom = product_box(image)
    assert right - left == pytest.approx(800, abs=2)  # width limits: 0.5 x 1600
    assert bottom - top == pytest.approx(200, abs=4)  # aspect ratio kept (box: 401 x 101)


def test_bottom_placement_sets_the_product_on_the_margin_line(cutout):
    channel = preset(placement="bottom", margin=0.05, fill=0.6)
    image = decode(render_packshot(cutout, channel).data)
    left, top, right, bottom = product_box(image)
    # The half-opaque edge sits on the line; the soft fringe below it may show a few px.
    assert bottom == pytest.approx(950, abs=6)
    assert top > 300  # well below the centred position (200)
    assert abs((left + right) / 2 - 500) <= 3
    assert check_packshot(render_packshot(cutout, channel).data, channel) == []


def test_the_contact_shadow_darkens_below_the_product_only(cutout):
    plain = np.asarray(decode(render_packshot(cutout, preset(format="png")).data), np.int16)
    shaded_shot = render_packshot(cutout, preset(format="png", shadow=True))
    shaded = np.asarray(decode(shaded_shot.data), np.int16)
    left, top, right, bottom = product_box(Image.fromarray(plain.astype(np.uint8)))
    darker = (plain - shaded).sum(axis=2) > 0
    ys, xs = np.nonzero(darker)
    assert len(ys) > 500
    # darker only around the base (the rounded corners let some show) and below it
    assert ys.min() >= bottom - 0.1 * (bottom - top)
    assert left <= xs.min() and xs.max() <= right  # never beside the product
    below = slice(bottom + 2, bottom + 8)
    middle = slice((left + right) // 2 - 20, (left + right) // 2 + 20)
    assert (plain[below, middle] - shaded[below, middle]).mean() > 10  # visible, yet subtle:
    assert shaded[below, middle].min() > 150  # never black
    base = int(bottom - 0.1 * (bottom - top))
    assert np.array_equal(plain[:base], shaded[:base])
    assert check_packshot(shaded_shot.data, preset(format="png", shadow=True)) == []


def test_no_dark_fringe_where_the_transparent_pixels_are_black():
    light = make_test_cutout(colour=(235, 235, 235), soft=2.5)
    image = decode(render_packshot(light, preset(format="png", fill=0.9)).data)
    arr = np.asarray(image)
    # every pixel lies between the product colour (about 200..255) and white: a dark
    # fringe (transparent black bleeding into the edge) would dip far below
    assert arr.min() >= 195


# --- encoding ----------------------------------------------------------------------------


def test_max_bytes_is_met_by_lowering_the_quality_step_by_step():
    busy = make_cutout(3, (800, 800), texture=12)
    free = render_packshot(busy, preset(quality=95))
    floor = render_packshot(busy, preset(quality=QUALITY_FLOOR))
    limit = (len(free.data) + len(floor.data)) // 2
    channel = preset(quality=95, max_bytes=limit)
    shot = render_packshot(busy, channel)
    assert len(shot.data) <= limit
    assert QUALITY_FLOOR <= shot.quality < 95
    assert "max_bytes" not in rules(check_packshot(shot.data, channel))


def test_an_impossible_max_bytes_stops_at_the_floor_and_the_check_reports_it(cutout):
    channel = preset(max_bytes=2_000)
    shot = render_packshot(cutout, channel)
    assert shot.quality == QUALITY_FLOOR
    issues = check_packshot(shot.data, channel)
    assert rules(issues) == ["max_bytes"]
    assert issues[0].measured == float(len(shot.data))
    assert str(len(shot.data)) in issues[0].message.replace(",", "")
    assert "2000" in issues[0].message.replace(",", "")


def test_an_icc_profile_larger_than_one_jpeg_segment_is_split_and_read_back_whole(cutout):
    jpeg = render_packshot(cutout, preset(width=300, height=300, min_long_side=300)).data
    big = bytes(range(256)) * 600  # 153,600 bytes: three APP2 segments
    stripped = decode(jpeg_with_icc(decode_to_plain_jpeg(jpeg), big))
    assert stripped.info["icc_profile"] == big
    with pytest.raises(ValueError, match="SOI"):
        jpeg_with_icc(b"PNG...", big)


def decode_to_plain_jpeg(data: bytes) -> bytes:
    """The same picture as a JPEG without any ICC profile."""
    buf = io.BytesIO()
    decode(data).save(buf, "JPEG")
    return buf.getvalue()


def test_png_over_max_bytes_is_optimised_and_still_reported_when_too_big(cutout):
    plain = render_packshot(cutout, preset(format="png"))
    channel = preset(format="png", max_bytes=len(plain.data) - 1)
    shot = render_packshot(cutout, channel)
    assert shot.quality is None and len(shot.data) < len(plain.data)  # zlib level 9
    tiny = preset(format="png", max_bytes=500)
    assert rules(check_packshot(render_packshot(cutout, tiny).data, tiny)) == ["max_bytes"]


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_png_and_webp_keep_transparency_only_when_allowed(fmt, cutout):
    opaque = decode(render_packshot(cutout, preset(format=fmt)).data)
    assert opaque.mode == "RGB" and opaque.format == fmt.upper()
    channel = preset(format=fmt, allow_alpha=True)
    shot = render_packshot(cutout, channel)
    image = decode(shot.data)
    assert image.mode == "RGBA" and shot.content_type == f"image/{fmt}"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((500, 500))[3] == 255
    assert check_packshot(shot.data, channel) == []
    assert rules(check_packshot(shot.data, preset(format=fmt))) == ["alpha"]


# --- presets -----------------------------------------------------------------------------


def test_a_custom_preset_from_a_yaml_like_mapping(cutout):
    custom = {"studio_grey": {"width": 1200, "height": 900, "background": "#f2f2f2"}}
    channel = resolve_preset("studio_grey", custom)
    assert channel.name == "studio_grey" and channel.background == "#F2F2F2"
    assert (channel.min_fill, channel.fill, channel.max_fill) == (0.8, 0.85, 0.9)
    assert channel.source == "custom"
    shot = render_packshot(cutout, channel)
    assert decode(shot.data).getpixel((5, 5)) == pytest.approx((242, 242, 242), abs=2)
    assert check_packshot(shot.data, channel) == []
    assert resolve_preset(channel) is channel
    assert resolve_preset({"name": "inline", "width": 800, "height": 800}).name == "inline"


def test_a_custom_preset_can_extend_another(cutout):
    custom = {
        "amazon_1500": {"extends": "amazon_main", "width": 1500, "height": 1500},
        "amazon_main": {"extends": "amazon_main", "quality": 85},  # override a built-in
    }
    small = resolve_preset("amazon_1500", custom)
    assert (small.width, small.min_fill, small.max_bytes) == (1500, 0.85, 10_000_000)
    assert "extends amazon_main" in small.source
    assert resolve_preset("amazon_main", custom).quality == 85
    wider = resolve_preset({"extends": "ebay", "name": "ebay_loose", "fill": 0.7})
    assert (wider.min_fill, wider.max_fill) == (0.65, 0.75)  # bounds follow the new fill


def test_parameters_are_json_and_hold_every_output_field():
    params = BUILTIN_PRESETS["amazon_main"].parameters()
    assert json.loads(json.dumps(params)) == params
    assert set(ChannelPreset.model_fields) <= set(params)
    assert params["renderer"].startswith("bria_dagster.packshot/")
    assert (preset(format="webp").ext, preset(format="webp").content_type) == (
        "webp",
        "image/webp",
    )


def test_a_typo_in_a_field_fails_naming_the_field():
    with pytest.raises(PresetError) as caught:
        resolve_preset("shop", {"shop": {"width": 1000, "height": 1000, "fil": 0.8}})
    message = str(caught.value)
    assert "'fil'" in message and "did you mean 'fill'" in message and "'shop'" in message
    with pytest.raises(pydantic.ValidationError, match="fil"):
        ChannelPreset(name="x", width=10, height=10, min_long_side=10, fil=0.8)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"background": "white"}, "background"),
        ({"fill": 0.9, "min_fill": 0.95}, "min_fill <= fill <= max_fill"),
        ({"format": "jpeg", "allow_alpha": True}, "allow_alpha"),
        ({"width": 0}, "width"),
        ({"format": "gif"}, "format"),
        ({"placement": "bottom", "fill": 0.9, "margin": 0.2}, "margin"),
        ({"width": 400, "height": 400, "min_long_side": 500}, "min_long_side"),
    ],
)
def test_invalid_preset_values_are_refused_with_the_field(fields, expected):
    with pytest.raises(PresetError, match=expected) as caught:
        resolve_preset({"name": "bad", "width": 1000, "height": 1000, **fields})
    assert "'bad'" in str(caught.value)


def test_an_unknown_preset_name_lists_the_known_ones():
    with pytest.raises(PresetError) as caught:
        resolve_preset("amazon", {"my_shop": {"width": 900, "height": 900}})
    message = str(caught.value)
    for name in [*BUILTIN_PRESETS, "my_shop"]:
        assert name in message
    assert "Did you mean 'amazon_main'" in message
    with pytest.raises(PresetError, match="not a int"):
        resolve_preset(42)  # type: ignore[arg-type]


# --- deliberately bad cases --------------------------------------------------------------


def test_a_tiny_product_fails_fill_with_the_measured_value(cutout):
    amazon = BUILTIN_PRESETS["amazon_main"]
    tiny = amazon.model_copy(update={"fill": 0.3, "min_fill": 0.25, "max_fill": 0.35})
    issues = check_packshot(render_packshot(cutout, tiny).data, amazon)
    assert rules(issues) == ["fill"]
    (issue,) = issues
    assert issue.measured == pytest.approx(0.3, abs=0.01)
    assert f"{issue.measured:.4g}" in issue.message and "0.85" in issue.message
    assert "too small" in issue.message


def test_a_product_cut_off_by_the_photo_edge_is_reported_and_at_full_fill_stains_the_border():
    cropped = make_test_cutout(box=(300, 250, 700, 700), soft=0)  # beyond the right/bottom
    amazon = BUILTIN_PRESETS["amazon_main"]
    issues = check_packshot(render_packshot(cropped, amazon).data, amazon, cutout=cropped)
    assert rules(issues) == ["product_touches_edge"]
    assert issues[0].measured == "right, bottom"
    assert "right, bottom" in issues[0].message

    full = amazon.model_copy(update={"fill": 1.0, "min_fill": 0.85, "max_fill": 1.0})
    issues = check_packshot(render_packshot(cropped, full).data, full)
    assert rules(issues) == ["background_purity"]
    assert issues[0].measured < 0.995
    assert f"{issues[0].measured:.4g}" in issues[0].message and "#FFFFFF" in issues[0].message


def test_a_grey_halo_around_the_product_is_reported():
    haloed = make_test_cutout(halo=20)
    amazon = BUILTIN_PRESETS["amazon_main"]
    issues = check_packshot(render_packshot(haloed, amazon).data, amazon, cutout=haloed)
    assert "halo" in rules(issues)
    issue = next(i for i in issues if i.rule == "halo")
    assert issue.measured > 0.02 and f"{issue.measured:.4g}" in issue.message
    narrow = make_test_cutout(halo=10)
    assert "halo" in rules(check_packshot(b"", amazon, cutout=narrow))
    # clean edges, even soft ones, are no halo
    for clean in (make_test_cutout(soft=0), make_test_cutout(soft=3.0), make_test_cutout(soft=6)):
        assert check_packshot(render_packshot(clean, amazon).data, amazon, cutout=clean) == []


def test_a_halo_reaching_the_border_also_fails_background_purity():
    haloed = make_test_cutout(halo=20)
    amazon = BUILTIN_PRESETS["amazon_main"]
    # the halo is part of the box (alpha > 8/255): at fill 1 the grey ring meets the edge
    shot = render_packshot(haloed, amazon.model_copy(update={"fill": 1.0, "max_fill": 1.0}))
    issue = next(i for i in check_packshot(shot.data, amazon) if i.rule == "background_purity")
    assert issue.measured < 0.995


def test_an_almost_empty_cutout_is_reported_and_an_empty_one_cannot_render():
    speck = make_test_cutout(box=(290, 290, 305, 305), shape="ellipse", soft=0)
    issues = check_packshot(
        render_packshot(speck, preset()).data, preset(), cutout=speck
    )  # renders (the speck, enlarged), but the cutout is flagged
    assert "empty_cutout" in rules(issues)
    issue = next(i for i in issues if i.rule == "empty_cutout")
    assert 0 < issue.measured < 0.005 and "0.005" in issue.message

    blank = io.BytesIO()
    Image.new("RGBA", (300, 200), (0, 0, 0, 0)).save(blank, "PNG")
    with pytest.raises(EmptyCutoutError, match=r"300x200.*no product pixels"):
        render_packshot(blank.getvalue(), preset())
    issues = check_packshot(
        render_packshot(speck, preset()).data, preset(), cutout=blank.getvalue()
    )
    assert next(i for i in issues if i.rule == "empty_cutout").measured == 0.0


def rgb_icc(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile (matrix + gamma curves, D50)."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(v) for v in values)

    text = description.encode("ascii") + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">I", 1) + struct.pack(">H", round(gamma * 256))
    curve += bytes(2)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red)),
        (b"gXYZ", xyz(green)),
        (b"bXYZ", xyz(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000)
    header += b"mntrRGB XYZ " + bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4)
    header += s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(4 + 16 + 28)
    return header + struct.pack(">I", len(tags)) + table + body


# Adobe RGB (1998) primaries, adapted to D50
WIDE_GAMUT = rgb_icc(
    "wide gamut test profile",
    (0.6097, 0.3111, 0.0195),
    (0.2053, 0.6257, 0.0609),
    (0.1492, 0.0632, 0.7446),
)


def test_a_cutout_in_another_colour_space_is_converted_to_srgb():
    plain = make_test_cutout(colour=(90, 160, 90), soft=0)
    image = decode(plain)
    image.info["icc_profile"] = WIDE_GAMUT
    channel = preset(format="png")
    assert is_srgb_profile(WIDE_GAMUT) is False
    converted = decode(render_packshot(image, channel).data).getpixel((500, 500))
    untagged = decode(render_packshot(plain, channel).data).getpixel((500, 500))
    expected = ImageCms.profileToProfile(
        Image.new("RGB", (1, 1), untagged),
        ImageCms.ImageCmsProfile(io.BytesIO(WIDE_GAMUT)),
        ImageCms.createProfile("sRGB"),
    ).getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(converted, untagged, strict=True)) > 10
    assert converted == pytest.approx(expected, abs=2)


# --- file rules on files made elsewhere --------------------------------------------------


def _file(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def test_format_alpha_size_and_colour_space_rules_on_foreign_files(cutout):
    amazon = BUILTIN_PRESETS["amazon_main"]
    good = decode(render_packshot(cutout, amazon).data)

    png = _file(good, "PNG")
    assert rules(check_packshot(png, amazon)) == ["format"]
    assert "PNG" in check_packshot(png, amazon)[0].message

    rgba = _file(good.convert("RGBA"), "PNG")
    assert rules(check_packshot(rgba, amazon.model_copy(update={"format": "png"}))) == ["alpha"]

    small = _file(good.resize((800, 800)), "JPEG", quality=90)
    (issue,) = check_packshot(small, amazon)
    assert issue.rule == "min_long_side" and issue.measured == 800.0 and "1000" in issue.limit

    cmyk = _file(good.convert("CMYK"), "JPEG", quality=90)
    assert "color_space" in rules(check_packshot(cmyk, amazon))
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    tagged = _file(good, "JPEG", quality=90, icc_profile=lab)
    (issue,) = check_packshot(tagged, amazon)
    assert issue.rule == "color_space" and "non-sRGB" in issue.message
    assert check_packshot(_file(good, "JPEG", quality=90), amazon) == []  # untagged = sRGB

    (issue,) = check_packshot(b"not an image at all", amazon)
    assert (issue.rule, issue.measured) == ("format", "undecodable")


def test_a_coloured_background_is_not_the_presets_white(cutout):
    amazon = BUILTIN_PRESETS["amazon_main"]
    grey = amazon.model_copy(update={"background": "#E0E0E0"})
    issues = check_packshot(render_packshot(cutout, grey).data, amazon)
    assert "background_purity" in rules(issues)
    assert next(i for i in issues if i.rule == "background_purity").measured < 0.01
