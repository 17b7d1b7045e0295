"""Requests that would give their input back unchanged, answered without a call.

An expansion whose canvas is the image's own size, with the image unresized at (0, 0)
(a square image to ``1:1``), returns the image as it is: on fal that is still a paid
call. The pipeline records such a request instead of sending it (``planning``); this
module does the same for the single-image calls (``BriaClient.expand_image``) when the
input is at hand (bytes, a ``data:`` URI or a local file). An ``http(s)``, ``s3`` or
``gs`` input is sent as it is: learning its size would mean downloading it here too.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image as PILImage

from ..records.schema import NOOP_BACKEND
from .backends.base import BackendResult, OutputImage
from .contracts.base import BriaRequest, Image
from .contracts.expand import ExpandRequest, ExpandResponse
from .fetch import fetch_bytes
from .fetch_policy import FetchPolicy
from .images import sniff_content_type, to_data_uri

__all__ = ["unchanged_expansion"]

_AT_HAND = {"data", "file", ""}  # schemes whose bytes are read here anyway, with no download


async def unchanged_expansion(request: BriaRequest, policy: FetchPolicy) -> BackendResult | None:
    """The result of ``request`` without a call, when it is an expansion that would give
    its input back unchanged; else ``None`` (send it)."""
    if not isinstance(request, ExpandRequest):
        return None
    source = request.image_url
    if isinstance(source, str) and urlsplit(source).scheme.lower() not in _AT_HAND:
        return None
    data = source if isinstance(source, bytes) else None
    if data is None:  # a path or data:/file:// URI, read under the fetch policy's roots
        text = str(source.resolve()) if isinstance(source, Path) else source
        data = (await fetch_bytes(text, policy)).data
    try:
        with PILImage.open(io.BytesIO(data)) as img:  # the header only
            size = img.size
    except Exception:  # not an image Pillow reads: the backend reports it properly
        return None
    if not request.placement(size).unchanged(size):
        return None
    content_type = sniff_content_type(data)
    width, height = size
    image = Image(
        url=to_data_uri(data, content_type), content_type=content_type, width=width, height=height
    )
    return BackendResult(
        endpoint_id=request.endpoint_id,
        backend=NOOP_BACKEND,
        request_id="",
        response=ExpandResponse.from_outputs([image], request.seed),
        images=[OutputImage(data=data, content_type=content_type, width=width, height=height)],
        seed=request.seed,
        cost_usd=0.0,
        duration_s=0.0,
        attempts=0,
    )
