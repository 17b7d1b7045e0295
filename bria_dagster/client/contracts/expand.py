"""``fal-ai/bria/expand``: grow the canvas (to an aspect ratio or a size) and fill the new area."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    MAX_SEED,
    BriaRequest,
    EndpointContract,
    ImageResponse,
    ListPrice,
    LocalInputs,
)
from .remove import PRICE_PAGE as COMPARISON_PAGE

if TYPE_CHECKING:
    from ...engine.outpaint import Placement

__all__ = [
    "CONTRACT",
    "MAX_CANVAS_AREA",
    "AspectRatio",
    "AspectRatioName",
    "ExpandRequest",
    "ExpandResponse",
]

MAX_CANVAS_AREA = 5000 * 5000
PRICE_PAGE = "fal.ai/models/fal-ai/bria/expand"
# Where fal's pages disagree, the endpoint's own (and higher) listing: a budget then
# never under-counts.
LIST_PRICE = ListPrice.per_call(
    0.04,
    source=f"{PRICE_PAGE} ('Price: $0.04 per generations'); the comparison on "
    f"{COMPARISON_PAGE} says $0.023 per operation",
    as_of="2026-11-30",
)


class AspectRatio(StrEnum):
    R1_1 = "1:1"
    R2_3 = "2:3"
    R3_2 = "3:2"
    R3_4 = "3:4"
    R4_3 = "4:3"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R9_16 = "9:16"
    R16_9 = "16:9"

    @classmethod
    def _missing_(cls, value: object) -> AspectRatio:
        # Instead of "'4x5' is not a valid AspectRatio": the values to choose from.
        raise ValueError(f"aspect_ratio {value!r} is not one of {', '.join(cls)}")

    @property
    def ratio(self) -> float:
        w, h = self.value.split(":")
        return int(w) / int(h)


AspectRatioName = Literal[tuple(ratio.value for ratio in AspectRatio)]  # type: ignore[valid-type]
"""An aspect ratio as settings spell it: the :class:`AspectRatio` values, as a ``Literal``
(a JSON-schema ``enum`` that ``dg check yaml`` checks)."""


def _pair(name: str, value: Any, *, allow_negative: bool = False) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [a, b] of integers, got {value!r}")
    a, b = value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must hold integers, got {value!r}")
    if not allow_negative and (a <= 0 or b <= 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(a), int(b)


class ExpandRequest(BriaRequest):
    """``fal-ai/bria/expand``: grow the canvas and fill the new area."""

    endpoint_id: ClassVar[str] = "fal-ai/bria/expand"

    canvas_size: tuple[int, int] = Field(
        description="[width, height] of the result; area under 5000x5000."
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="Target ratio; wins over canvas_size and the original's size/location.",
    )
    original_image_size: tuple[int, int] | None = None
    original_image_location: tuple[int, int] | None = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("canvas_size", "original_image_size", mode="before")
    @classmethod
    def _check_size(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        return _pair(info.field_name, value)

    @field_validator("original_image_location", mode="before")
    @classmethod
    def _check_location(cls, value: Any) -> Any:
        if value is None:
            return None
        return _pair("original_image_location", value, allow_negative=True)

    @model_validator(mode="after")
    def _check_geometry(self) -> ExpandRequest:
        w, h = self.canvas_size
        if w * h >= MAX_CANVAS_AREA:
            raise ValueError(
                f"canvas_size {w}x{h} has area {w * h}; it must be under 5000x5000 = "
                f"{MAX_CANVAS_AREA} pixels"
            )
        if (self.original_image_size is None) != (self.original_image_location is None):
            raise ValueError(
                "original_image_size and original_image_location go together: give both or neither"
            )
        return self

    def placement(self, input_size: tuple[int, int]) -> Placement:
        """Where an input of ``input_size`` lands on the canvas, as fal decides it."""
        from ...engine.outpaint import plan_expand

        return plan_expand(
            input_size,
            canvas_size=self.canvas_size,
            original_image_size=self.original_image_size,
            original_image_location=self.original_image_location,
            aspect_ratio=None if self.aspect_ratio is None else str(self.aspect_ratio),
        )


class ExpandResponse(ImageResponse):
    seed: int | None = None


def render_local(request: ExpandRequest, inputs: LocalInputs) -> list[tuple[bytes, str]]:
    import numpy as np

    from ...engine import outpaint
    from ...errors import EngineError
    from ..images import encode_array

    image = inputs.images["image_url"]
    placement = request.placement(image.size)
    pw, ph = placement.size
    if pw * ph > inputs.max_pixels:
        # The original is resized to this size before cropping to the canvas.
        raise EngineError(
            f"expand: original_image_size {pw}x{ph} is {pw * ph:,} pixels, over this "
            f"backend's max_pixels={inputs.max_pixels:,}; give a smaller original_image_size"
        )
    return [encode_array(outpaint.expand_image(np.asarray(image), placement, seed=inputs.seed))]


CONTRACT = EndpointContract("expand", ExpandRequest, ExpandResponse, LIST_PRICE, render_local)
