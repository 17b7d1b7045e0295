"""``build_definitions``: the whole pipeline as one ``dagster.Definitions``.

Assets, the main job, the Parquet IO manager and ``BriaResource`` configured from
one storage location; ``FAL_KEY`` switches the backend from the embedded engine
to fal.ai (``backend="auto"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dagster as dg

from .assets import PipelineSettings, build_product_image_assets
from .io_manager import ImageRecordIOManager
from .resource import BriaResource

__all__ = ["MAIN_JOB_NAME", "build_definitions"]

MAIN_JOB_NAME = "product_images"


def build_definitions(
    settings: PipelineSettings | None = None,
    *,
    storage: str = "bria_data",
    bria: BriaResource | None = None,
    key_prefix: str | Sequence[str] | None = None,
    extra: Sequence[Any] = (),
) -> dg.Definitions:
    """The pipeline: assets, the ``product_images`` job, resources (and ``extra`` defs).

    ``bria`` defaults to ``BriaResource(fal_key=EnvVar("FAL_KEY"), storage=storage)``
    when ``FAL_KEY`` is set and to the local engine otherwise.
    """
    settings = settings or PipelineSettings()
    if bria is None:
        if os.environ.get("FAL_KEY"):
            bria = BriaResource(fal_key=dg.EnvVar("FAL_KEY"), storage=storage)
        else:
            bria = BriaResource(storage=storage)
    assets = build_product_image_assets(settings, key_prefix=key_prefix)
    job = dg.define_asset_job(
        MAIN_JOB_NAME,
        selection=dg.AssetSelection.assets(*assets),
        description="Materialize one catalog batch end to end: source -> cutouts -> scenes "
        "-> expansions.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[job],
        resources={"bria": bria, "io_manager": ImageRecordIOManager(base_dir=bria.storage)},
        **_split(extra),
    )


def _split(extra: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"sensors": [], "schedules": [], "asset_checks": []}
    for item in extra:
        if isinstance(item, dg.SensorDefinition):
            out["sensors"].append(item)
        elif isinstance(item, dg.ScheduleDefinition):
            out["schedules"].append(item)
        else:
            out["asset_checks"].append(item)
    return {k: v for k, v in out.items() if v}
