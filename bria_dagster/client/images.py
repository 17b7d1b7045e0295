"""Safe image decoding and encoding, hashing and data URIs.

Every image that enters bria-dagster (catalog sources, fal outputs, reference
images) goes through :func:`decode_image`, which turns whatever a vendor sent
into an RGB or RGBA Pillow image, or raises a precise error. It never crashes on
hostile input and never decodes pixels before checking the pixel count.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "MAX_PIXELS_DEFAULT",
    "decode_image",
    "encode_array",
    "encode_png",
    "parse_data_uri",
    "sha256_hex",
    "sniff_content_type",
    "to_data_uri",
]

MAX_PIXELS_DEFAULT = 50_000_000
"""Default decompression-bomb guard: 50 megapixels."""

# Truncated files must fail loudly, never decode to half a picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"ftypavif", 4, "image/avif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"BM", 0, "image/bmp"),
]


def sniff_content_type(data: bytes) -> str:
    """The image content type by magic bytes, or ``application/octet-stream``."""
    for magic, offset, content_type in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return content_type
    return "application/octet-stream"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _where(source: str) -> str:
    return f" ({source})" if source else ""


def decode_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS_DEFAULT, source: str = ""
) -> Image.Image:
    """Decode ``data`` into an RGB or RGBA image.

    Applies EXIF orientation, takes the first frame of animations, converts
    CMYK, 16-bit, palette (keeping transparency) and grayscale images.

    Raises :class:`ImageTooLargeError` when the header announces more than
    ``max_pixels`` pixels (checked before any pixel is decoded) and
    :class:`ImageDecodeError` for empty, non-image or truncated data.
    """
    where = _where(source)
    if not data:
        raise ImageDecodeError(f"image is empty (0 bytes){where}; check the source URL or file")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on bombs using a global limit; ours is per call.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height:,} pixels{where}, over the "
                    f"limit of {max_pixels:,}; raise max_pixels if this image is legitimate"
                )
            img.seek(0)  # first frame of GIF/WebP/APNG animations
            img.load()
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is a decompression bomb{where}: {exc}") from None
    except UnidentifiedImageError:
        kind = sniff_content_type(data)
        raise ImageDecodeError(
            f"bytes are not a decodable image{where} ({len(data)} bytes, detected {kind}); "
            "supply a JPEG, PNG, WebP, GIF or TIFF"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            f"image data is truncated or corrupt{where}: {exc}; re-export or re-download it"
        ) from None
    return _normalise(img)


def _normalise(img: Image.Image) -> Image.Image:
    ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when nothing to turn
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16)
        peak = 65535 if mode != "I" or arr.max() > 255 else 255
        eight = (arr.astype(np.float64) * (255.0 / peak)).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("LA", "PA", "La", "RGBa"):
        return img.convert("RGBA")
    if mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")


def encode_png(img: Image.Image, *, compress_level: int = 3) -> bytes:
    """PNG bytes of ``img``; deterministic for the same pixels (no timestamps)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_array(pixels: np.ndarray) -> tuple[bytes, str]:
    """An engine's output array as bytes: RGBA as PNG (level 1: about as small as 3 on
    photos and cutouts, and the fastest zlib setting), RGB as JPEG (quality 92)."""
    img = Image.fromarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return encode_png(img, compress_level=1), "image/png"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, optimize=False)
    return buf.getvalue(), "image/jpeg"


def to_data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def parse_data_uri(uri: str) -> tuple[bytes, str]:
    """``(bytes, content_type)`` of a ``data:`` URI (base64 or percent-free plain)."""
    if not uri.startswith("data:") or "," not in uri:
        raise ImageDecodeError(
            f"not a data URI: {uri[:40]!r}...; expected data:<type>;base64,<payload>"
        )
    header, payload = uri[5:].split(",", 1)
    parts = header.split(";")
    content_type = parts[0] or "application/octet-stream"
    if "base64" not in parts[1:]:
        return payload.encode(), content_type
    try:
        return base64.b64decode(payload, validate=True), content_type
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"data URI ({content_type}) has invalid base64: {exc}") from None
