"""``expand``: each scene grown to every requested aspect ratio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from ...client.contracts.expand import AspectRatio, AspectRatioName, ExpandRequest
from ...errors import BriaError
from ..step import Parent, Step

if TYPE_CHECKING:
    from ..rows import Job

__all__ = ["STEP", "ExpandSettings"]


class ExpandSettings(BaseModel):
    """What expand asks for; a catalog row's ``aspect_ratios`` (and ``seed``) win."""

    aspect_ratios: tuple[AspectRatioName, ...] = Field(
        default=("1:1", "4:5"), description="Expansions per scene (catalog 'aspect_ratios' wins)."
    )

    # Before the Literal type's own check, so that the error names the value and every
    # allowed one in words ("aspect_ratio '4x5' is not one of 1:1, 2:3, ...").
    @field_validator("aspect_ratios", mode="before")
    @classmethod
    def _known_ratios(cls, value: Any) -> Any:
        for ratio in value if isinstance(value, list | tuple) else ():
            AspectRatio(ratio)  # raises "aspect_ratio '4x5' is not one of 1:1, 2:3, ..."
        return value


def _ratios(parent: Parent) -> list[str]:
    settings: ExpandSettings = parent.settings
    return list(parent.catalog.aspect_ratios or settings.aspect_ratios)


def _plan(parent: Parent) -> list[Job]:
    # The local engine's placement, which follows fal's: the same canvas (imported here:
    # the declaration itself stays free of numpy).
    from ...engine.outpaint import plan_expand

    size = parent.size
    jobs = []
    for ratio, variant in zip(_ratios(parent), _variants(parent), strict=True):
        try:
            placement = plan_expand(size, canvas_size=None, aspect_ratio=ratio)
        except BriaError as exc:
            jobs.append(parent.failed(variant, exc))
            continue
        arguments: dict[str, Any] = {"aspect_ratio": ratio, "canvas_size": list(placement.canvas)}
        if parent.seed is not None:
            arguments["seed"] = parent.seed
        job = parent.request(variant, arguments)
        if job.request is not None and placement.unchanged(size):
            job.noop = (
                f"the image is already {size[0]}x{size[1]}, the {ratio} canvas: "
                "expand would return it unchanged, so it was not sent"
            )
        jobs.append(job)
    return jobs


def _variants(parent: Parent) -> list[str]:
    return [f"{parent.variant}@{ratio}" for ratio in _ratios(parent)]


STEP = Step(
    name="expand",
    asset="product_expansions",
    parent="replace",
    endpoint=ExpandRequest.endpoint_id,
    description="Expanded formats: one image per scene and aspect ratio.",
    plan=_plan,
    variants=_variants,
    image_modes=("RGB", "RGBA"),
    settings=ExpandSettings,
    on_by_default=True,
    order=30,
)
