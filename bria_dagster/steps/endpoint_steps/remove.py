"""``remove``: the background removed, one RGBA cutout per source image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...client.contracts.remove import RemoveBackgroundRequest
from ..step import SOURCE, Parent, Step

if TYPE_CHECKING:
    from ..rows import Job

__all__ = ["STEP"]


def _plan(parent: Parent) -> list[Job]:
    return [parent.request("cutout", {})]


STEP = Step(
    name="remove",
    asset="product_cutouts",
    parent=SOURCE,
    endpoint=RemoveBackgroundRequest.endpoint_id,
    description="Background removed: one RGBA PNG cutout per source image.",
    plan=_plan,
    variants=lambda parent: ["cutout"],
    image_modes=("RGBA",),
    cutout=True,
    on_by_default=True,
    order=10,
)
