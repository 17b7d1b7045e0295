"""LocalBackend: the embedded engine behind FalBackend's contract.

Same validated requests, same fal-shaped responses; inputs from http(s) on
loopback, file:// URLs and paths under FetchPolicy.file_roots, data URIs and
bytes; and a precise BriaError for every kind of bad input.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from bria_dagster.client.backends.fal import FalBackend
from bria_dagster.client.backends.local import LocalBackend
from bria_dagster.client.contracts import build_request
from bria_dagster.client.contracts.expand import ExpandRequest
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.contracts.replace import ReplaceBackgroundRequest
from bria_dagster.client.fetch_policy import FetchPolicy
from bria_dagster.client.images import parse_data_uri, to_data_uri
from bria_dagster.client.retry import RetryPolicy
from bria_dagster.engine import matte
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import (
    BriaError,
    EngineError,
    FetchFailedError,
    FetchRefusedError,
    ImageDecodeError,
    ImageTooLargeError,
    RequestValidationError,
)

SIZE = (160, 120)  # (width, height): small, not square, so transposed sizes show up


def photo(seed: int = 0, size: tuple[int, int] = SIZE, category: str = "white_studio") -> bytes:
    return make_product_photo(category, seed, size)[0]


def pixels(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def local_path(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(unquote(urlsplit(url).path))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    return root


@pytest.fixture
def local(tmp_path: Path, files: Path) -> LocalBackend:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), file_roots=(str(files),))
    return LocalBackend(output_dir=tmp_path / "outputs", fetch_policy=policy)


class ImageServer:
    """A plain HTTP server on 127.0.0.1 serving bytes put into ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = routes.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, name: str, data: bytes) -> str:
        self.routes[f"/{name}"] = data
        return f"{self.base}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[ImageServer]:
    srv = ImageServer()
    yield srv
    srv.close()


# --------------------------------------------------------------------------- the contract


def _shape(result) -> tuple:
    """What must agree between backends: response type, fields, seed presence, sizes."""
    response = result.response
    images = response.output_images()
    return (
        type(response),
        result.endpoint_id,
        sorted(response.model_dump(exclude_none=True)),
        [sorted(img.model_dump(exclude_none=True)) for img in images],
        [(img.width, img.height) for img in images],
        [(out.width, out.height) for out in result.images],
        result.seed is None,
    )


async def test_responses_have_the_shape_fal_gives(fal_server, local: LocalBackend):
    jpeg = photo(1)
    cutout_png = pixels(jpeg)  # replaced below by a real cutout from each backend
    fal = FalBackend(
        "test-key-0",
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.02, max_delay_s=0.1),
        poll_interval_s=0.02,
    )
    try:
        shapes: dict[str, list[tuple]] = {}
        for name, backend in (("fal", fal), ("local", local)):
            cut = await backend.run(RemoveBackgroundRequest(image_url=jpeg))
            cutout_png = cut.images[0].data
            requests = [
                ReplaceBackgroundRequest(image_url=cutout_png, prompt="blue", num_images=2, seed=7),
                ReplaceBackgroundRequest(image_url=jpeg, ref_image_url=photo(2), seed=7),
                ExpandRequest(image_url=jpeg, canvas_size=(240, 200)),
                ExpandRequest(image_url=jpeg, canvas_size=(1, 1), aspect_ratio="1:1", seed=3),
            ]
            shapes[name] = [_shape(cut)] + [_shape(await backend.run(r)) for r in requests]
    finally:
        await fal.aclose()
    assert shapes["local"] == shapes["fal"]
    assert shapes["local"][1][4] == [(160, 120), (160, 120)]
    assert shapes["local"][4][4] == [(160, 160)]


async def test_outputs_are_files_that_match_the_response(local: LocalBackend, tmp_path: Path):
    result = await local.run(
        ReplaceBackgroundRequest(image_url=photo(), prompt="red", num_images=3)
    )
    assert result.backend == "local" and result.request_id.startswith("local-")
    assert result.cost_usd == 0.0 and result.endpoint_id == "fal-ai/bria/background/replace"
    for img, out in zip(result.response.output_images(), result.images, strict=True):
        path = local_path(img.url)
        assert path.parent == (tmp_path / "outputs").resolve()
        assert path.read_bytes() == out.data and out.url == img.url
        assert img.file_size == len(out.data) and img.file_name == path.name
        decoded = pixels(out.data)
        assert decoded.size == (img.width, img.height) == (out.width, out.height) == SIZE
        assert img.content_type == out.content_type == Image.MIME[decoded.format]


async def test_sync_mode_returns_data_uris_and_writes_no_file(local: LocalBackend):
    requests = [
        RemoveBackgroundRequest(image_url=photo(), sync_mode=True),
        ReplaceBackgroundRequest(image_url=photo(), prompt="wood", num_images=2, sync_mode=True),
        ExpandRequest(image_url=photo(), canvas_size=(200, 200), sync_mode=True),
    ]
    for request in requests:
        result = await local.run(request)
        for img, out in zip(result.response.output_images(), result.images, strict=True):
            data, content_type = parse_data_uri(img.url)
            assert data == out.data and content_type == out.content_type == img.content_type
            assert out.url is None and img.file_size == len(data)
    assert list(local.output_dir.iterdir()) == []


# --------------------------------------------------------------------------- inputs


async def test_every_input_kind_gives_the_same_result(
    local: LocalBackend, server: ImageServer, files: Path
):
    jpeg = photo(3)
    path = files / "product.jpg"
    path.write_bytes(jpeg)
    inputs = [
        jpeg,
        server.put("product.jpg", jpeg),
        path.as_uri(),
        path,
        str(path),
        to_data_uri(jpeg, "image/jpeg"),
    ]
    outputs = set()
    for value in inputs:
        result = await local.run(RemoveBackgroundRequest(image_url=value))
        outputs.add(result.images[0].data)
    assert len(outputs) == 1


async def test_reference_image_is_fetched_over_http(local: LocalBackend, server: ImageServer):
    ref = server.put("backdrop.jpg", photo(5, (300, 200), "textured"))
    result = await local.run(
        ReplaceBackgroundRequest(image_url=photo(), ref_image_url=ref, num_images=2, seed=1)
    )
    assert [out.width for out in result.images] == [160, 160]
    assert result.images[0].data != result.images[1].data


async def test_inputs_outside_the_policy_are_refused(
    local: LocalBackend, server: ImageServer, tmp_path: Path
):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(photo())
    for value in (outside, outside.as_uri(), str(outside)):
        with pytest.raises(FetchRefusedError):
            await local.run(RemoveBackgroundRequest(image_url=value))
    strict = LocalBackend(output_dir=tmp_path / "o2")  # default policy: no loopback, no files
    with pytest.raises(FetchRefusedError):
        await strict.run(RemoveBackgroundRequest(image_url=server.put("a.jpg", photo())))
    with pytest.raises(FetchFailedError, match="404"):
        await local.run(RemoveBackgroundRequest(image_url=f"{server.base}/missing.jpg"))


# --------------------------------------------------------------------------- remove


async def test_remove_gives_rgba_of_the_input_size_with_soft_alpha(local: LocalBackend):
    jpeg, truth = make_product_photo("gray_gradient", 4, (200, 150), shape="bottle")
    result = await local.run(RemoveBackgroundRequest(image_url=jpeg))
    out = pixels(result.images[0].data)
    assert out.format == "PNG" and out.mode == "RGBA" and out.size == (200, 150)
    alpha = np.asarray(out.getchannel("A"))
    assert alpha.min() == 0 and alpha.max() == 255
    assert ((alpha > 0) & (alpha < 255)).sum() > 20  # anti-aliased edge, not a hard mask
    inside, outside = truth > 0.99, truth < 0.01
    assert (alpha[inside] > 128).mean() > 0.95 and (alpha[outside] < 128).mean() > 0.95
    # Colour is the input's, untouched.
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(pixels(jpeg)))
    assert result.seed is None and "seed" not in result.response.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- replace


@pytest.mark.parametrize("num_images", [1, 2, 3, 4])
async def test_replace_with_prompt_gives_distinct_images(local: LocalBackend, num_images: int):
    request = ReplaceBackgroundRequest(
        image_url=photo(), prompt="green marble", num_images=num_images, seed=11
    )
    result = await local.run(request)
    datas = [out.data for out in result.images]
    assert len(datas) == len(set(datas)) == num_images
    assert all(pixels(d).size == SIZE and pixels(d).mode == "RGB" for d in datas)
    assert result.seed == result.response.seed == 11


async def test_replace_is_reproducible_from_inputs_and_seed(local: LocalBackend):
    def request(**kw) -> ReplaceBackgroundRequest:
        return ReplaceBackgroundRequest(image_url=photo(), prompt="beige linen", num_images=2, **kw)

    first = await local.run(request(seed=5))
    again = await local.run(request(seed=5))
    other = await local.run(request(seed=6))
    data = [o.data for o in first.images]
    assert data == [o.data for o in again.images]
    assert data != [o.data for o in other.images]
    # Without a seed one is chosen, returned, and reproduces the result when given back.
    chosen = await local.run(request())
    assert isinstance(chosen.seed, int) and chosen.seed == chosen.response.seed
    replay = await local.run(request(seed=chosen.seed))
    assert [o.data for o in replay.images] == [o.data for o in chosen.images]


async def test_replace_uses_a_cutouts_own_alpha(local: LocalBackend):
    cut = await local.run(RemoveBackgroundRequest(image_url=photo(8)))
    from_cutout = await local.run(
        ReplaceBackgroundRequest(image_url=cut.images[0].data, prompt="white", seed=2)
    )
    from_photo = await local.run(
        ReplaceBackgroundRequest(image_url=photo(8), prompt="white", seed=2)
    )
    assert pixels(from_cutout.images[0].data).size == SIZE
    assert from_cutout.images[0].data == from_photo.images[0].data  # same matte either way


async def test_replace_with_reference_differs_from_prompt(local: LocalBackend):
    ref = photo(9, (90, 240), "colored")  # another shape: cover-fitted to the subject's size
    by_ref = await local.run(ReplaceBackgroundRequest(image_url=photo(), ref_image_url=ref, seed=3))
    by_prompt = await local.run(ReplaceBackgroundRequest(image_url=photo(), prompt="red", seed=3))
    assert pixels(by_ref.images[0].data).size == SIZE
    assert by_ref.images[0].data != by_prompt.images[0].data
    assert by_ref.seed == 3


# --------------------------------------------------------------------------- expand


@pytest.mark.parametrize(
    ("ratio", "size", "expected"),
    [("1:1", (128, 160), (160, 160)), ("16:9", (160, 120), (214, 120)), ("9:16", SIZE, (160, 285))],
)
async def test_expand_by_aspect_ratio(local: LocalBackend, ratio, size, expected):
    jpeg = photo(2, size)
    request = ExpandRequest(image_url=jpeg, canvas_size=(1, 1), aspect_ratio=ratio, seed=4)
    result = await local.run(request)
    out = np.asarray(pixels(result.images[0].data)).astype(int)
    assert (out.shape[1], out.shape[0]) == expected == (result.images[0].width, out.shape[0])
    x, y = (expected[0] - size[0]) // 2, (expected[1] - size[1]) // 2
    original = np.asarray(pixels(jpeg)).astype(int)
    inner = out[y : y + size[1], x : x + size[0]]
    assert np.abs(inner - original).mean() < 3  # the original sits centred (JPEG noise only)
    assert result.seed == 4


async def test_expand_by_canvas_size_and_placement(local: LocalBackend):
    jpeg = photo(6)
    request = ExpandRequest(
        image_url=jpeg,
        canvas_size=(300, 220),
        original_image_size=(80, 60),
        original_image_location=(200, 150),
    )
    result = await local.run(request)
    out = np.asarray(pixels(result.images[0].data)).astype(int)
    assert out.shape == (220, 300, 3)
    small = np.asarray(pixels(jpeg).resize((80, 60), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(out[150:210, 200:280] - small).mean() < 6
    assert isinstance(result.seed, int)  # chosen, and returned as fal does
    again = await local.run(request)
    assert again.seed == result.seed and again.images[0].data == result.images[0].data


async def test_expand_keeps_alpha_of_rgba_input(local: LocalBackend):
    rgba = np.zeros((100, 80, 4), np.uint8)
    rgba[..., :3] = (40, 90, 200)
    rgba[20:80, 10:70, 3] = 255
    rgba[20:80, 10, 3] = 120  # a soft edge
    source = encoded(Image.fromarray(rgba, "RGBA"), "PNG")
    result = await local.run(ExpandRequest(image_url=source, canvas_size=(160, 100)))
    out = pixels(result.images[0].data)
    assert result.images[0].content_type == "image/png" and out.mode == "RGBA"
    alpha = np.asarray(out.getchannel("A"))
    assert out.size == (160, 100)
    assert np.array_equal(alpha[:, 40:120], rgba[..., 3])  # kept exactly, centred
    assert alpha[:, :40].max() == 0 and alpha[:, 120:].max() == 0  # new area transparent


async def test_expand_refuses_canvases_of_25_megapixels(local: LocalBackend):
    wide = encoded(Image.new("RGB", (5000, 2000), (200, 200, 200)), "JPEG")
    with pytest.raises(EngineError, match=r"5000x5000.*under 5000x5000"):
        await local.run(ExpandRequest(image_url=wide, canvas_size=(1, 1), aspect_ratio="1:1"))
    with pytest.raises(RequestValidationError, match="canvas_size"):
        build_request("expand", image_url=wide, canvas_size=[5000, 5000])


async def test_expand_refuses_a_huge_original_size_before_resizing(local: LocalBackend):
    request = ExpandRequest(
        image_url=photo(),
        canvas_size=(200, 200),
        original_image_size=(100_000, 100_000),
        original_image_location=(0, 0),
    )
    with pytest.raises(EngineError, match=r"original_image_size 100000x100000.*max_pixels"):
        await local.run(request)


# --------------------------------------------------------------------------- bad input


async def test_empty_bytes_are_rejected_by_the_request_model():
    with pytest.raises(RequestValidationError, match="empty"):
        build_request("remove", image_url=b"")


async def test_empty_download_is_a_decode_error(local: LocalBackend, server: ImageServer):
    with pytest.raises(ImageDecodeError, match="empty"):
        await local.run(RemoveBackgroundRequest(image_url=server.put("empty.jpg", b"")))


async def test_non_image_bytes_are_a_decode_error(local: LocalBackend):
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        await local.run(RemoveBackgroundRequest(image_url=b"<html>not found</html>" * 20))


async def test_truncated_jpeg_is_a_decode_error(local: LocalBackend):
    jpeg = photo()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        await local.run(ExpandRequest(image_url=jpeg[: len(jpeg) // 2], canvas_size=(200, 200)))


async def test_decompression_bomb_is_refused_before_decoding(local: LocalBackend):
    bomb = encoded(Image.new("1", (10_000, 6_000)), "PNG")  # 60 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError, match="10000x6000"):
        await local.run(RemoveBackgroundRequest(image_url=bomb))


async def test_pixel_limit_is_configurable(tmp_path: Path):
    jpeg = photo()  # 160x120 = 19,200 pixels
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        await LocalBackend(output_dir=tmp_path, max_pixels=19_199).run(
            RemoveBackgroundRequest(image_url=jpeg)
        )
    ref_too_big = ReplaceBackgroundRequest(image_url=jpeg, ref_image_url=photo(1, (200, 120)))
    with pytest.raises(ImageTooLargeError, match="ref_image_url"):
        await LocalBackend(output_dir=tmp_path, max_pixels=19_200).run(ref_too_big)
    result = await LocalBackend(output_dir=tmp_path, max_pixels=19_200).run(
        RemoveBackgroundRequest(image_url=jpeg)
    )
    assert result.images[0].width == 160


async def test_cmyk_jpeg_is_converted(local: LocalBackend):
    rgb = pixels(photo(3))
    cmyk = encoded(rgb.convert("CMYK"), "JPEG", quality=95)
    result = await local.run(RemoveBackgroundRequest(image_url=cmyk))
    out = pixels(result.images[0].data)
    assert out.mode == "RGBA" and out.size == SIZE
    diff = np.abs(np.asarray(out.convert("RGB")).astype(int) - np.asarray(rgb).astype(int))
    assert diff.mean() < 8  # colours survive, not inverted


async def test_16_bit_png_is_scaled_to_8_bit(local: LocalBackend):
    ramp = np.tile(np.linspace(0, 65535, 160).round().astype(np.uint16), (120, 1))
    source = encoded(Image.fromarray(ramp), "PNG")
    assert pixels(source).mode.startswith("I;16")
    result = await local.run(RemoveBackgroundRequest(image_url=source))
    out = np.asarray(pixels(result.images[0].data))
    assert out.shape == (120, 160, 4)
    assert out[0, 0, :3].tolist() == [0, 0, 0] and out[0, -1, :3].tolist() == [255, 255, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


async def test_palette_png_transparency_is_kept(local: LocalBackend):
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[:] = (250, 250, 250)
    rgb[30:100, 50:110] = (200, 30, 30)
    rgb[:, :20] = (0, 0, 0)  # the transparent colour
    img = Image.fromarray(rgb).quantize(colors=8)
    black = img.getpixel((0, 0))
    source = encoded(img, "PNG", transparency=black)
    assert pixels(source).mode == "P"
    result = await local.run(RemoveBackgroundRequest(image_url=source))
    alpha = np.asarray(pixels(result.images[0].data).getchannel("A"))
    assert alpha.shape == (120, 160)
    assert alpha[:, :20].max() == 0  # transparent in the input: transparent in the cutout
    assert alpha[40:90, 60:100].min() > 200  # the product is found
    expanded = await local.run(ExpandRequest(image_url=source, canvas_size=(200, 120)))
    assert pixels(expanded.images[0].data).mode == "RGBA"


async def test_animated_gif_uses_the_first_frame(local: LocalBackend):
    frames = [Image.new("RGB", (90, 70), colour) for colour in ((0, 200, 0), (0, 0, 200))]
    for frame in frames:
        frame.paste((220, 220, 40), (30, 20, 60, 55))
    source = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(pixels(source), "n_frames", 1) == 2
    result = await local.run(RemoveBackgroundRequest(image_url=source))
    out = np.asarray(pixels(result.images[0].data))
    assert out.shape == (70, 90, 4)
    assert out[2, 2, :3].tolist() == [0, 200, 0]


async def test_exif_rotated_jpeg_is_upright(local: LocalBackend):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    source = encoded(pixels(photo()), "JPEG", exif=exif.tobytes())
    removed = await local.run(RemoveBackgroundRequest(image_url=source))
    assert pixels(removed.images[0].data).size == (120, 160)
    scenes = await local.run(ReplaceBackgroundRequest(image_url=source, prompt="grey", seed=1))
    assert (scenes.images[0].width, scenes.images[0].height) == (120, 160)
    wide = await local.run(ExpandRequest(image_url=source, canvas_size=(1, 1), aspect_ratio="1:1"))
    assert pixels(wide.images[0].data).size == (160, 160)


async def test_grayscale_jpeg_becomes_rgb(local: LocalBackend):
    source = encoded(pixels(photo()).convert("L"), "JPEG")
    result = await local.run(RemoveBackgroundRequest(image_url=source))
    out = np.asarray(pixels(result.images[0].data))
    assert out.shape == (120, 160, 4)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    scenes = await local.run(ReplaceBackgroundRequest(image_url=source, prompt="teal", seed=1))
    assert pixels(scenes.images[0].data).size == SIZE


async def test_webp_is_decoded(local: LocalBackend):
    rgb = pixels(photo(4))
    source = encoded(rgb, "WEBP", lossless=True)
    result = await local.run(RemoveBackgroundRequest(image_url=source))
    out = pixels(result.images[0].data)
    assert out.size == SIZE
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(rgb))


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 2)])
async def test_degenerate_sizes_succeed_or_fail_clearly(local: LocalBackend, size):
    source = encoded(Image.new("RGB", size, (120, 60, 30)), "PNG")
    requests = [
        RemoveBackgroundRequest(image_url=source),
        ReplaceBackgroundRequest(image_url=source, prompt="white", seed=0),
        ExpandRequest(image_url=source, canvas_size=(1, 1), aspect_ratio="4:5"),
    ]
    for request in requests:
        try:
            result = await local.run(request)
        except BriaError as exc:
            assert str(exc)
        else:
            assert all(out.width >= 1 and out.height >= 1 for out in result.images)


async def test_unexpected_engine_failures_become_engine_errors(local: LocalBackend, monkeypatch):
    def broken(rgb, config=None):
        raise RuntimeError("cv2 said no")

    monkeypatch.setattr(matte, "remove_background", broken)
    with pytest.raises(EngineError, match=r"local remove failed on image_url .*cv2 said no"):
        await local.run(RemoveBackgroundRequest(image_url=photo()))
