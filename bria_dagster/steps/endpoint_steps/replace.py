"""``replace``: new backgrounds for each cutout, from a prompt or a reference image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ...client.contracts.replace import ReplaceBackgroundRequest
from ..step import Parent, Step

if TYPE_CHECKING:
    from ..rows import Job

__all__ = ["STEP", "ReplaceSettings"]


class ReplaceSettings(BaseModel):
    """What replace asks for; per-row catalog columns (prompt, ref_image_url,
    negative_prompt, seed) win."""

    prompt_template: str = Field(
        default="professional studio product photo, soft light, clean seamless backdrop",
        description="Default replace prompt; may use {sku} and any catalog column.",
    )
    ref_image_url: str | None = Field(
        default=None, description="Default reference background (instead of a prompt)."
    )
    negative_prompt: str = ""
    num_images: int = Field(default=1, ge=1, le=4, description="Scenes per cutout.")


def _plan(parent: Parent) -> list[Job]:
    settings: ReplaceSettings = parent.settings
    catalog = parent.catalog
    ref = catalog.ref_image_url or (None if catalog.prompt else settings.ref_image_url)
    arguments: dict[str, Any] = {
        "num_images": settings.num_images,
        "negative_prompt": catalog.negative_prompt or settings.negative_prompt,
    }
    if parent.seed is not None:
        arguments["seed"] = parent.seed
    if ref:
        arguments["ref_image_url"] = ref
    else:
        arguments["prompt"] = catalog.prompt or catalog.fill(
            settings.prompt_template, "prompt_template"
        )
    return [parent.request("scene", arguments)]


STEP = Step(
    name="replace",
    asset="product_scenes",
    parent="remove",
    endpoint=ReplaceBackgroundRequest.endpoint_id,
    description="New backgrounds: num_images scenes per cutout, from a prompt or reference image.",
    plan=_plan,
    variants=lambda parent: ["scene"],
    image_modes=("RGB",),
    settings=ReplaceSettings,
    on_by_default=True,
    order=20,
)
