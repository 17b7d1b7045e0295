"""``fal-ai/bria/background/remove``: cut the subject out; one RGBA PNG."""

from __future__ import annotations

from typing import ClassVar, Self

from .base import BriaRequest, BriaResponse, EndpointContract, Image, ListPrice, LocalInputs

__all__ = ["CONTRACT", "RemoveBackgroundRequest", "RemoveBackgroundResponse"]

PRICE_PAGE = "fal.ai/docs/model-api-reference/image-generation-api/bria-background"


class RemoveBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/remove``: cut the subject out, RGBA PNG out."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/remove"


class RemoveBackgroundResponse(BriaResponse):
    image: Image

    def output_images(self) -> list[Image]:
        return [self.image]

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        return cls(image=images[0])


def render_local(request: RemoveBackgroundRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    from ..images import encode_array

    return [encode_array(inputs.cutout(inputs.images["image_url"]))]


CONTRACT = EndpointContract(
    name="remove",
    request_model=RemoveBackgroundRequest,
    response_model=RemoveBackgroundResponse,
    list_price=ListPrice(
        usd=0.018,
        unit="call",
        source=f"{PRICE_PAGE} ('RMBG 2.0 ... at $0.018 per inference')",
        as_of="2026-11-30",
    ),
    render_local=render_local,
)
