"""``fal-ai/bria/product-shot``: the product placed in a generated lifestyle scene.

The scene comes from ``scene_description`` or ``ref_image_url`` (exactly one); where the
product goes from ``placement_type``. A call returns ``num_results`` images, ten times
that with ``placement_type="automatic"`` (one per recommended position): each is billed.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    BriaRequest,
    EndpointContract,
    ImagesResponse,
    ListPrice,
    LocalInputs,
    OptionalImageInput,
    OptionalText,
    require_one_of,
)
from .remove import PRICE_PAGE as COMPARISON_PAGE

__all__ = [
    "AUTOMATIC_PLACEMENTS",
    "CONTRACT",
    "PlacementName",
    "PlacementType",
    "ProductShotRequest",
    "ProductShotResponse",
]

PRICE_PAGE = "fal.ai/models/fal-ai/bria/product-shot"
LIST_PRICE = ListPrice.per_image(
    0.04,
    source=f"{PRICE_PAGE} ('Price: $0.04 per generations'); the comparison on "
    f"{COMPARISON_PAGE} says 'Bria Product Shot ($0.023)': the endpoint's own, higher "
    "listing is kept, so a budget never under-counts",
    as_of="2026-12-06",
)

PlacementType = Literal["original", "automatic", "manual_placement", "manual_padding"]
"""Where the product goes: where it stood, ten recommended positions, one chosen
position (``manual_placement_selection``), or a padding around it (``padding_values``)."""

PlacementName = Literal[
    "upper_left",
    "upper_right",
    "bottom_left",
    "bottom_right",
    "right_center",
    "left_center",
    "upper_center",
    "bottom_center",
    "center_vertical",
    "center_horizontal",
]
"""A ``manual_placement_selection``: a position on the ``shot_size`` canvas."""

AUTOMATIC_PLACEMENTS = 10
"""Images per result with ``placement_type="automatic"`` (fal: "num_results x 10")."""

# The request's fields the engine function takes as they are.
_ENGINE_ARGUMENTS = {
    "scene_description",
    "placement_type",
    "shot_size",
    "manual_placement_selection",
    "padding_values",
    "original_quality",
    "num_results",
}


class ProductShotRequest(BriaRequest):
    """``fal-ai/bria/product-shot``: the product (``image_url``) in a new scene."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/product-shot"

    scene_description: OptionalText = Field(
        default=None, description="Text describing the scene (English; not with ref_image_url)."
    )
    ref_image_url: OptionalImageInput = Field(
        default=None, description="Reference image of the scene (not with scene_description)."
    )
    optimize_description: bool = True
    num_results: int = Field(default=1, ge=1, le=4)
    fast: bool = True
    placement_type: PlacementType = "manual_placement"
    original_quality: bool = Field(
        default=False, description="With placement_type original: keep the input's size."
    )
    shot_size: tuple[int, int] = Field(
        default=(1000, 1000), description="[width, height] with automatic or manual_placement."
    )
    manual_placement_selection: PlacementName = "bottom_center"
    padding_values: tuple[int, int, int, int] | None = Field(
        default=None, description="[left, right, top, bottom] pixels with manual_padding."
    )

    @model_validator(mode="after")
    def _check(self) -> ProductShotRequest:
        require_one_of(self, "ref_image_url", "scene_description")
        if min(self.shot_size) <= 0:
            raise ValueError(f"shot_size must be positive, got {list(self.shot_size)}")
        if self.padding_values is not None and min(self.padding_values) < 0:
            raise ValueError(f"padding_values must be >= 0, got {list(self.padding_values)}")
        if self.placement_type == "manual_padding" and self.padding_values is None:
            raise ValueError("placement_type manual_padding needs padding_values")
        return self

    @classmethod
    def input_fields(cls) -> tuple[str, ...]:
        return ("image_url", "ref_image_url")

    def output_count(self) -> int:
        per_result = AUTOMATIC_PLACEMENTS if self.placement_type == "automatic" else 1
        return self.num_results * per_result


class ProductShotResponse(ImagesResponse):
    """fal's answer: the shots, in placement order, as ``images`` (no seed)."""


def render_local(request: ProductShotRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    """The product placed on a generated scene (see :meth:`LocalInputs.on_scene`)."""
    from ...engine.product_shot import product_shots

    return inputs.on_scene(
        product_shots,
        max_pixels=inputs.max_pixels,
        **request.model_dump(include=_ENGINE_ARGUMENTS),
    )


CONTRACT = EndpointContract(
    "product_shot", ProductShotRequest, ProductShotResponse, LIST_PRICE, render_local
)
