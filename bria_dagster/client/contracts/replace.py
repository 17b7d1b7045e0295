"""``fal-ai/bria/background/replace``: a new background from a prompt or a reference image."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import Field, field_validator, model_validator

from .base import (
    MAX_SEED,
    BriaRequest,
    BriaResponse,
    EndpointContract,
    Image,
    ImageInput,
    ListPrice,
    LocalInputs,
    validate_input,
)
from .remove import PRICE_PAGE

__all__ = ["CONTRACT", "ReplaceBackgroundRequest", "ReplaceBackgroundResponse"]


class ReplaceBackgroundRequest(BriaRequest):
    """``fal-ai/bria/background/replace``: new background from a prompt or a reference image."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/background/replace"

    ref_image_url: ImageInput | None = Field(
        default=None, description="Reference image for the new background (not with prompt)."
    )
    prompt: str | None = Field(default=None, description="Text describing the new background.")
    negative_prompt: str = ""
    refine_prompt: bool = True
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    fast: bool = True
    num_images: int = Field(default=1, ge=1, le=4)

    @field_validator("ref_image_url", mode="before")
    @classmethod
    def _check_ref(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        return validate_input(value)

    @field_validator("prompt", mode="before")
    @classmethod
    def _blank_prompt_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _exactly_one_background_source(self) -> ReplaceBackgroundRequest:
        has_ref = self.ref_image_url is not None
        has_prompt = self.prompt is not None
        if has_ref == has_prompt:
            raise ValueError(
                "give exactly one of ref_image_url or prompt "
                f"(got {'both' if has_ref else 'neither'})"
            )
        return self

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        return ("image_url", "ref_image_url")

    def output_count(self) -> int:
        return self.num_images


class ReplaceBackgroundResponse(BriaResponse):
    images: list[Image]
    seed: int | None = None

    def output_images(self) -> list[Image]:
        return self.images

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        return cls(images=images, seed=seed)


def render_local(request: ReplaceBackgroundRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    """A generated scene behind the subject: a real alpha channel is kept, else matted."""
    import numpy as np

    from ...engine import scene
    from ..images import encode_array

    image = inputs.images["image_url"]
    rgba = np.asarray(image) if image.mode == "RGBA" else None
    if rgba is None or int(rgba[..., 3].min()) == 255:
        rgba = inputs.cutout(image)
    reference = inputs.images.get("ref_image_url")
    scenes = scene.replace_background(
        rgba,
        prompt=request.prompt,
        reference=None if reference is None else np.asarray(reference.convert("RGB")),
        seed=inputs.seed,
        num_images=request.num_images,
    )
    return [encode_array(pixels) for pixels in scenes]


CONTRACT = EndpointContract(
    name="replace",
    request_model=ReplaceBackgroundRequest,
    response_model=ReplaceBackgroundResponse,
    list_price=ListPrice(
        usd=0.023,
        unit="image",
        source=f"{PRICE_PAGE} ('Bria Background Replace ($0.023)')",
        as_of="2026-11-30",
    ),
    render_local=render_local,
)
