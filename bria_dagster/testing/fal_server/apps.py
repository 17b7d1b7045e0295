"""The three Bria apps behind the queue, making real (cheap, deterministic) images:

- ``fal-ai/bria/background/remove``  -> RGBA PNG of the input size (border-colour matte)
- ``fal-ai/bria/background/replace`` -> 1..4 composites on a prompt- or reference-made backdrop
- ``fal-ai/bria/expand``             -> the input padded onto the requested canvas

Their answers have fal's shape (``image`` / ``images`` with url, size and content type);
a bad input fails the job with fal's 422 detail.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import uuid
from typing import Any

import numpy as np
from PIL import Image

from .files import FileStore
from .schema import MAX_CANVAS_AREA, MAX_INPUT_PIXELS, MAX_SEED, JobFailed, invalid
from .state import ServerState

__all__ = ["BriaApps"]


def _border_alpha(rgb: np.ndarray) -> np.ndarray:
    """A cheap real matte: distance from the median border colour, soft-thresholded."""
    h, w = rgb.shape[:2]
    band = max(1, round(min(h, w) * 0.03))
    border = np.concatenate(
        [
            rgb[:band].reshape(-1, 3),
            rgb[-band:].reshape(-1, 3),
            rgb[:, :band].reshape(-1, 3),
            rgb[:, -band:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0).astype(np.float32)
    dist = np.sqrt(((rgb.astype(np.float32) - bg) ** 2).sum(axis=2))
    return np.clip((dist - 20.0) / 30.0, 0.0, 1.0)


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _backdrop(size: tuple[int, int], prompt: str, seed: int) -> np.ndarray:
    """A deterministic vertical gradient whose colours come from the prompt and seed."""
    w, h = size
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    top = np.frombuffer(digest[:3], np.uint8).astype(np.float32)
    bottom = np.frombuffer(digest[3:6], np.uint8).astype(np.float32)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = top * (1 - t) + bottom * t
    return np.broadcast_to(col, (h, w, 3)).copy()


class BriaApps:
    """Runs one job's arguments to its result (in the server's worker threads)."""

    def __init__(self, state: ServerState, files: FileStore) -> None:
        self._state = state
        self._files = files

    def process(self, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
        sync = bool(args.get("sync_mode", False))
        if endpoint.endswith("/remove"):
            return self._remove(args, sync)
        if endpoint.endswith("/replace"):
            return self._replace(args, sync)
        return self._expand(args, sync)

    def _load(self, field: str, url: str) -> Image.Image:
        """Decode an input image; a 422 if it is unreadable or too large."""
        data = self._files.read_input(field, url)
        try:
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_INPUT_PIXELS:
                raise invalid(
                    field, f"Image is too large ({img.size[0]}x{img.size[1]})", "image_too_large"
                )
            img.load()
        except JobFailed:
            raise
        except Exception as exc:
            raise invalid(
                field, f"Unable to load the image from {field}: {exc}", "image_load_error"
            ) from None
        return img.convert("RGBA") if "A" in img.mode else img.convert("RGB")

    def _output(self, img: Image.Image, sync: bool) -> dict[str, Any]:
        """A result image as fal describes it: a data URI in sync mode, else a file URL."""
        data = _encode_png(img)
        name = uuid.uuid4().hex + ".png"
        if sync:
            url = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            url = self._files.store(data, "image/png", ".png", faulty=True)
            name = url.rsplit("/", 1)[1]
        return {
            "url": url,
            "content_type": "image/png",
            "file_name": name,
            "file_size": len(data),
            "width": img.width,
            "height": img.height,
        }

    def _seed(self, args: dict[str, Any]) -> int:
        if args.get("seed") is not None:
            return int(args["seed"])
        with self._state.lock:
            return self._state.rng.randrange(MAX_SEED)

    def _remove(self, args: dict[str, Any], sync: bool) -> dict[str, Any]:
        img = self._load("image_url", args["image_url"])
        rgb = np.asarray(img.convert("RGB"))
        alpha = _border_alpha(rgb)
        if img.mode == "RGBA":
            alpha = np.minimum(alpha, np.asarray(img.getchannel("A"), np.float32) / 255)
        rgba = np.dstack([rgb, np.round(alpha * 255).astype(np.uint8)])
        return {"image": self._output(Image.fromarray(rgba, "RGBA"), sync)}

    def _replace(self, args: dict[str, Any], sync: bool) -> dict[str, Any]:
        ref = args.get("ref_image_url") or None
        prompt = (args.get("prompt") or "").strip() or None
        if (ref is None) == (prompt is None):
            raise invalid(
                "ref_image_url",
                "Either ref_image_url or prompt has to be provided but not both",
                "value_error",
            )
        img = self._load("image_url", args["image_url"])
        rgb = np.asarray(img.convert("RGB")).astype(np.float32)
        if img.mode == "RGBA":
            alpha = np.asarray(img.getchannel("A"), np.float32) / 255
        else:
            alpha = _border_alpha(rgb.astype(np.uint8))
        seed = self._seed(args)
        ref_rgb = None
        if ref is not None:
            ref_img = self._load("ref_image_url", ref).convert("RGB").resize(img.size)
            ref_rgb = np.asarray(ref_img).astype(np.float32)
        images = []
        for i in range(int(args.get("num_images") or 1)):
            if ref_rgb is not None:
                tint = _backdrop((1, 1), "ref", seed + i)[0, 0]
                bg = ref_rgb * 0.85 + tint * 0.15
            else:
                bg = _backdrop(img.size, prompt or "", seed + i)
            out = rgb * alpha[..., None] + bg * (1 - alpha[..., None])
            pil = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB")
            images.append(self._output(pil, sync))
        return {"images": images, "seed": seed}

    def _expand(self, args: dict[str, Any], sync: bool) -> dict[str, Any]:
        img = self._load("image_url", args["image_url"]).convert("RGB")
        cw, ch = args["canvas_size"]
        ratio = args.get("aspect_ratio")
        size = args.get("original_image_size")
        location = args.get("original_image_location")
        if (size is None) != (location is None):
            raise invalid(
                "original_image_location",
                "original_image_size and original_image_location must be given together",
                "value_error",
            )
        if ratio is not None:
            rw, rh = (int(v) for v in ratio.split(":"))
            w, h = img.size
            if w * rh < h * rw:
                cw, ch = math.ceil(h * rw / rh), h
            else:
                cw, ch = w, math.ceil(w * rh / rw)
            size = location = None
        if cw <= 0 or ch <= 0 or cw * ch >= MAX_CANVAS_AREA:
            raise invalid(
                "canvas_size",
                f"canvas_size {cw}x{ch} must be positive with an area under 5000x5000",
                "value_error",
            )
        if size is not None:
            if size[0] <= 0 or size[1] <= 0:
                raise invalid("original_image_size", "sizes must be positive", "value_error")
            placed = img.resize((size[0], size[1]))
            x, y = location
        else:
            scale = min(1.0, cw / img.width, ch / img.height)
            placed = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            )
            x, y = (cw - placed.width) // 2, (ch - placed.height) // 2
        arr = np.asarray(placed)
        edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).mean(axis=0)
        canvas = Image.new("RGB", (cw, ch), tuple(int(v) for v in edge.round()))
        canvas.paste(placed, (int(x), int(y)))
        return {"image": self._output(canvas, sync), "seed": self._seed(args)}
