"""``fal-ai/bria/background/remove``: cut the subject out; one RGBA PNG."""

from __future__ import annotations

from typing import ClassVar

from .base import BriaRequest, EndpointContract, ImageResponse, ListPrice, LocalInputs

__all__ = ["CONTRACT", "RemoveBackgroundRequest", "RemoveBackgroundResponse"]

PRICE_PAGE = "fal.ai/docs/model-api-reference/image-generation-api/bria-background"
LIST_PRICE = ListPrice.per_call(
    0.018, source=f"{PRICE_PAGE} ('RMBG 2.0 ... at $0.018 per inference')", as_of="2026-11-30"
)


class RemoveBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/remove``: cut the subject out, RGBA PNG out."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/remove"


class RemoveBackgroundResponse(ImageResponse):
    """fal's answer: the cutout (RGBA PNG) as ``image``."""


def render_local(request: RemoveBackgroundRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    from ..images import encode_array

    return [encode_array(inputs.cutout(inputs.images["image_url"]))]


CONTRACT = EndpointContract(
    "remove", RemoveBackgroundRequest, RemoveBackgroundResponse, LIST_PRICE, render_local
)
