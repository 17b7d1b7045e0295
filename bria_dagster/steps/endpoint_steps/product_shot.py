"""``product_shot``: each source product placed in a generated lifestyle scene.

Its scene is the catalog row's ``scene_description`` column when it has one, else the
reference scene ``scene_ref_image_url``, else ``scene_template`` filled from the row's
columns. Each call returns ``num_results`` shots (ten times that with
``placement_type: automatic``), all recorded, estimated and budgeted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from ...client.contracts import build_request
from ...client.contracts.product_shot import PlacementName, PlacementType, ProductShotRequest
from ..step import SOURCE, Parent, Step

if TYPE_CHECKING:
    from ..rows import Job

__all__ = ["STEP", "ProductShotSettings"]


class ProductShotSettings(BaseModel):
    """What product_shot asks for (fal's ``fast`` and ``optimize_description`` keep their
    defaults)."""

    scene_template: str = Field(
        default="on a light oak table by a window, soft natural daylight",
        description="product_shot: the scene description; may use {sku} and any catalog "
        "column (a row's scene_description column wins).",
    )
    scene_ref_image_url: str | None = Field(
        default=None, description="product_shot: a reference scene instead of a description."
    )
    placement_type: PlacementType = Field(
        default="manual_placement",
        description="product_shot: original, automatic (10 shots per result, each billed), "
        "manual_placement (at manual_placement_selection) or manual_padding "
        "(padding_values).",
    )
    manual_placement_selection: PlacementName = Field(
        default="bottom_center", description="product_shot: where manual_placement puts it."
    )
    shot_size: tuple[int, int] = Field(
        default=(1000, 1000),
        description="product_shot: [width, height] with automatic or manual_placement.",
    )
    padding_values: tuple[int, int, int, int] | None = Field(
        default=None,
        description="product_shot: [left, right, top, bottom] pixels with manual_padding.",
    )
    original_quality: bool = Field(
        default=False, description="product_shot: with original, keep the source's size."
    )
    num_results: int = Field(default=1, ge=1, le=4, description="product_shot: results per call.")

    @model_validator(mode="after")
    def _valid_for_the_endpoint(self) -> Any:
        # The contract's own checks (padding with manual_padding, sizes), now rather than
        # at the first product: a stand-in image and scene, as the rows' come later.
        build_request(
            ProductShotRequest.endpoint_id,
            image_url=b"stand-in",
            scene_description="stand-in",
            **self.model_dump(include=_REQUEST_FIELDS),
        )
        return self


# The settings that are request fields of the same name.
_REQUEST_FIELDS = {
    "placement_type",
    "manual_placement_selection",
    "shot_size",
    "padding_values",
    "original_quality",
    "num_results",
}


def _plan(parent: Parent) -> list[Job]:
    settings: ProductShotSettings = parent.settings
    arguments = settings.model_dump(mode="json", include=_REQUEST_FIELDS, exclude_none=True)
    described = parent.catalog.extra.get("scene_description")
    if not described and settings.scene_ref_image_url:
        arguments["ref_image_url"] = settings.scene_ref_image_url
    else:
        arguments["scene_description"] = described or parent.catalog.fill(
            settings.scene_template, "scene_template"
        )
    return [parent.request("shot", arguments)]


STEP = Step(
    name="product_shot",
    asset="product_shots",
    parent=SOURCE,
    endpoint=ProductShotRequest.endpoint_id,
    description="Product shots: each source product placed in a generated lifestyle scene "
    "(num_results per product, ten times that with placement_type automatic).",
    plan=_plan,
    variants=lambda parent: ["shot"],
    image_modes=("RGB", "RGBA"),
    settings=ProductShotSettings,
    order=40,
)
