"""``fal-ai/bria/background/replace``: a new background from a prompt or a reference image."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from .base import (
    MAX_SEED,
    BriaRequest,
    EndpointContract,
    ImagesResponse,
    ListPrice,
    LocalInputs,
    OptionalImageInput,
    OptionalText,
    require_one_of,
)
from .remove import PRICE_PAGE

__all__ = ["CONTRACT", "ReplaceBackgroundRequest", "ReplaceBackgroundResponse"]

LIST_PRICE = ListPrice.per_image(
    0.023, source=f"{PRICE_PAGE} ('Bria Background Replace ($0.023)')", as_of="2026-11-30"
)


class ReplaceBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/replace``: new background from a prompt or a reference image."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/replace"

    ref_image_url: OptionalImageInput = Field(
        default=None, description="Reference image for the new background (not with prompt)."
    )
    prompt: OptionalText = Field(default=None, description="Text describing the new background.")
    negative_prompt: str = ""
    refine_prompt: bool = True
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    fast: bool = True
    num_images: int = Field(default=1, ge=1, le=4)

    @model_validator(mode="after")
    def _exactly_one_background_source(self) -> ReplaceBackgroundRequest:
        require_one_of(self, "ref_image_url", "prompt")
        return self

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        return ("image_url", "ref_image_url")

    def output_count(self) -> int:
        return self.num_images


class ReplaceBackgroundResponse(ImagesResponse):
    seed: int | None = None


def render_local(request: ReplaceBackgroundRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    """A generated scene behind the subject (see :meth:`LocalInputs.on_scene`)."""
    from ...engine.scene import replace_background

    return inputs.on_scene(replace_background, prompt=request.prompt, num_images=request.num_images)


CONTRACT = EndpointContract(
    "replace", ReplaceBackgroundRequest, ReplaceBackgroundResponse, LIST_PRICE, render_local
)
