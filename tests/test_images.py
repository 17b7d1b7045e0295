"""Bad input gives a clear error, never a crash; odd-but-valid images are normalised."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bria_dagster.client.images import (
    decode_image,
    encode_png,
    parse_data_uri,
    sha256_hex,
    sniff_content_type,
    to_data_uri,
)
from bria_dagster.errors import ImageDecodeError, ImageTooLargeError


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    arr = np.broadcast_to(x, (h, w, 3)).copy()
    arr[..., 1] = 100
    return Image.fromarray(arr, "RGB")


def test_zero_bytes():
    with pytest.raises(ImageDecodeError, match=r"empty \(0 bytes\) \(sku-1\)"):
        decode_image(b"", source="sku-1")


def test_non_image_bytes():
    with pytest.raises(ImageDecodeError, match=r"not a decodable image.*detected application"):
        decode_image(b"<html>404 not found</html>", source="https://x/y.jpg")


def test_truncated_jpeg():
    data = _save(_gradient(256, 256), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused_before_decoding():
    bomb = _save(Image.new("1", (8000, 8000)), "PNG")  # 64 MP, a few KB on disk
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError, match=r"8000x8000 = 64,000,000 pixels.*50,000,000"):
        decode_image(bomb)
    with pytest.raises(ImageTooLargeError, match="limit of 100"):
        decode_image(_save(_gradient(), "PNG"), max_pixels=100)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    img = decode_image(_save(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    data = _save(Image.fromarray(arr), "PNG")
    img = decode_image(data)
    assert img.mode == "RGB"
    assert abs(img.getpixel((0, 0))[0] - 127) <= 1


def test_palette_png_with_transparency_keeps_alpha():
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((5, 5), 1)
    img = decode_image(_save(pal, "PNG", transparency=0))
    assert img.mode == "RGBA"
    assert img.getpixel((0, 0))[3] == 0
    assert img.getpixel((5, 5)) == (0, 0, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    img = decode_image(buf.getvalue())
    r, g, _ = img.convert("RGB").getpixel((8, 8))
    assert r > 200 and g < 50


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_save(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize(("mode", "expected"), [("L", "RGB"), ("LA", "RGBA"), ("1", "RGB")])
def test_grayscale_modes(mode, expected):
    out = decode_image(_save(Image.new(mode, (8, 8)), "PNG"))
    assert out.mode == expected


def test_webp():
    out = decode_image(_save(_gradient(), "WEBP", quality=90))
    assert out.mode == "RGB" and out.size == (64, 48)


def test_png_round_trip_hash_and_sniffing():
    img = _gradient()
    png = encode_png(img)
    assert png == encode_png(img)  # deterministic
    assert sniff_content_type(png) == "image/png"
    assert sniff_content_type(_save(img, "JPEG")) == "image/jpeg"
    assert sniff_content_type(_save(img, "WEBP")) == "image/webp"
    assert len(sha256_hex(png)) == 64
    assert np.array_equal(np.asarray(decode_image(png)), np.asarray(img))


def test_data_uris():
    png = encode_png(_gradient())
    assert parse_data_uri(to_data_uri(png, "image/png")) == (png, "image/png")
    with pytest.raises(ImageDecodeError, match="invalid base64"):
        parse_data_uri("data:image/png;base64,@@@")
    with pytest.raises(ImageDecodeError, match="not a data URI"):
        parse_data_uri("https://example.com/a.png")
