"""LocalBackend: the embedded engine behind the same contract as fal.

Takes the same validated requests, returns the same fal-shaped responses, with
outputs written as files (``file://`` URLs) or, with ``sync_mode``, data URIs.
Runs with no key and no network: inputs are fetched from http(s)/file/data URLs
under a :class:`~bria_dagster.client.fetch_policy.FetchPolicy`, and the image work runs in
worker threads (OpenCV and NumPy release the GIL).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from ...engine import matte
from ...errors import BriaError, EngineError
from ..contracts import endpoint_for
from ..contracts.base import BriaRequest, Image, LocalInputs
from ..fetch import fetch_bytes
from ..fetch_policy import FetchPolicy
from ..images import decode_image, to_data_uri
from .base import BackendResult, OutputImage

__all__ = ["LocalBackend"]


def _derive_seed(request: BriaRequest) -> int:
    """fal picks a random seed when none is given; we pick a reproducible one."""
    digest = hashlib.sha256(request.model_dump_json().encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class LocalBackend:
    """Runs Bria requests on the embedded engine (no key, no network needed).

    Args:
        output_dir: where output files are written; by default a temporary folder that
            :meth:`aclose` removes (the bytes are in the result either way).
        fetch_policy: what input URLs may be fetched (schemes, hosts, sizes, time).
        max_workers: image operations run at once (default: CPU count).
        max_pixels: decompression-bomb limit for inputs.
        matte_model: optional ONNX segmentation model for remove (see README).
    """

    name = "local"

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        fetch_policy: FetchPolicy | None = None,
        max_workers: int | None = None,
        max_pixels: int = 50_000_000,
        matte_model: Any | None = None,
    ) -> None:
        # A folder of our own is removed by aclose(); the bytes travel in BackendResult.
        self._owns_output_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="bria-local-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.fetch_policy = fetch_policy or FetchPolicy()
        self.max_pixels = max_pixels
        self.matte_model = matte_model
        self._slots = asyncio.Semaphore(max_workers or os.cpu_count() or 2)

    def __repr__(self) -> str:
        return f"LocalBackend(output_dir={str(self.output_dir)!r})"

    async def aclose(self) -> None:
        if self._owns_output_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    async def _fetch(self, value: str | Path | bytes, what: str) -> tuple[bytes, str]:
        """Input bytes and a name for messages; paths obey ``fetch_policy.file_roots`` too."""
        if isinstance(value, bytes):
            return value, f"{what} (bytes)"
        text = str(value)
        return (await fetch_bytes(text, self.fetch_policy)).data, f"{what} {text[:200]}"

    async def run(self, request: BriaRequest, **_: object) -> BackendResult:
        """Run one request in-process. The :class:`~.base.Backend` keywords (``journal``,
        ``on_service_done``) do not apply: nothing remote to re-attach to, and the work is
        the whole request."""
        spec = endpoint_for(request)
        if spec.render_local is None:
            raise EngineError(f"the local engine does not implement {request.endpoint_id}")
        started = time.perf_counter()
        inputs = {name: await self._fetch(value, name) for name, value in request.inputs().items()}
        # fal picks a random seed when none is given; the engine a reproducible one.
        seeded = "seed" in type(request).model_fields
        seed = getattr(request, "seed", None)
        if seed is None:
            seed = _derive_seed(request)
        async with self._slots:
            try:
                outputs = await asyncio.to_thread(self._work, request, inputs, seed)
            except BriaError:
                raise
            except Exception as exc:  # the engine's contract: a BriaError, never a crash
                raise EngineError(
                    f"local {spec.name} failed on {inputs['image_url'][1]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        images = [
            self._publish(data, content_type, request.sync_mode) for data, content_type in outputs
        ]
        response = spec.response_model.from_outputs(images, seed if seeded else None)
        return BackendResult(
            endpoint_id=spec.endpoint_id,
            backend=self.name,
            request_id=f"local-{uuid.uuid4().hex}",
            response=response,
            images=[
                OutputImage(
                    data=data,
                    content_type=content_type,
                    width=img.width or 0,
                    height=img.height or 0,
                    url=img.url if not img.url.startswith("data:") else None,
                )
                for (data, content_type), img in zip(outputs, images, strict=True)
            ],
            seed=seed if seeded else None,
            cost_usd=0.0,
            duration_s=time.perf_counter() - started,
        )

    def _work(
        self, request: BriaRequest, inputs: dict[str, tuple[bytes, str]], seed: int
    ) -> list[tuple[bytes, str]]:
        """Decode and render in a worker thread, under a slot (bounds memory and CPU)."""
        decoded = {
            name: decode_image(data, max_pixels=self.max_pixels, source=where)
            for name, (data, where) in inputs.items()
        }
        render = endpoint_for(request).render_local
        assert render is not None  # checked by run()
        return render(
            request,
            LocalInputs(images=decoded, seed=seed, cutout=self._cutout, max_pixels=self.max_pixels),
        )

    def _cutout(self, image: PILImage.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"))
        if self.matte_model is not None:
            alpha = self.matte_model.predict(rgb)
        else:
            alpha = matte.remove_background(rgb)
        if image.mode == "RGBA":
            # What the input already hides (transparent PNG/GIF pixels) stays hidden.
            given = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
            alpha = np.minimum(alpha, given)
        return matte.to_rgba(rgb, alpha)

    def _publish(self, data: bytes, content_type: str, sync_mode: bool) -> Image:
        with PILImage.open(io.BytesIO(data)) as img:
            width, height = img.size
        ext = "png" if content_type == "image/png" else "jpg"
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
        if sync_mode:
            url = to_data_uri(data, content_type)
        else:
            path = self.output_dir / name
            if not path.exists():
                tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            url = path.resolve().as_uri()
        return Image(
            url=url,
            content_type=content_type,
            file_name=name,
            file_size=len(data),
            width=width,
            height=height,
        )
