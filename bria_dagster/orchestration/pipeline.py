"""A pipeline: what to do (settings) and where its outputs go (storage), under one name.

Every name a pipeline adds to a code location derives from its ``name``, so any
number of pipelines and the user's own assets live side by side:

=====================  ==========================================
asset keys             ``<name>/catalog_batch``, ``<name>/product_cutouts``, ...
partitions             ``<name>_batches`` (one per catalog batch file)
job                    ``<name>``
IO manager key         ``<name>_io_manager`` (never Dagster's default ``io_manager``)
sensor                 ``<name>_catalog_sensor``
schedules              ``<name>_retry_failed_daily``, ``<name>_refresh_weekly``
=====================  ==========================================

The shared :class:`~bria_dagster.BriaResource` (how to call Bria) sits under the
key ``bria``; one instance serves every pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from ..records.storage import PipelineStorage
from ..steps.settings import PipelineSettings
from .assets import build_product_image_assets
from .automation import build_catalog_sensor, build_refresh_schedule, build_retry_schedule
from .catalog_dir import require_catalog_dir
from .identity import DEFAULT_PIPELINE_NAME, PipelineIdentity
from .resource import BriaResource
from .translator import BriaTranslator

__all__ = [
    "DEFAULT_PIPELINE_NAME",
    "ProductImagePipeline",
    "build_definitions",
    "require_catalog_dir",
]

RESOURCE_KEY = "bria"


@dataclass(frozen=True)
class ProductImagePipeline(PipelineIdentity):
    """One product-image pipeline.

    Args:
        name: names everything the pipeline adds (see the module docs); letters, digits
            and ``_``, starting with a letter.
        settings: what the steps do.
        storage: a folder, an fsspec URL or a :class:`PipelineStorage`.
        translator: how steps appear as assets (key, group, owners, tags, ...).
    """

    # -- definitions ---------------------------------------------------------------------

    def build_assets(self) -> list[dg.AssetsDefinition]:
        """``catalog_batch`` and the step assets of ``settings.steps``, with their checks."""
        return build_product_image_assets(self)

    def build_job(
        self, assets: Sequence[dg.AssetsDefinition] | None = None
    ) -> dg.UnresolvedAssetJobDefinition:
        """The job that materializes one catalog batch of this pipeline end to end."""
        return dg.define_asset_job(
            self.job_name,
            selection=dg.AssetSelection.assets(*(assets or self.build_assets())),
            description=f"Materialize one catalog batch of pipeline {self.name!r} end to end: "
            "source -> cutouts -> scenes -> expansions.",
        )

    def build_operations(self) -> list[dg.SensorDefinition | dg.ScheduleDefinition]:
        """The catalog sensor, the daily retry and the weekly refresh schedule (all stopped
        until turned on). A local ``catalog_dir`` that does not exist fails here."""
        self.require_catalog_dir()
        return [
            build_catalog_sensor(self),
            build_retry_schedule(self),
            build_refresh_schedule(self),
        ]

    def build_definitions(
        self, bria: BriaResource | None = None, *, operations: bool = True
    ) -> dg.Definitions:
        """This pipeline's assets, checks, job, IO manager (and sensor and schedules), plus
        the shared ``bria`` resource. A local ``catalog_dir`` that does not exist fails here,
        when the code location loads, rather than at the sensor's first tick."""
        self.require_catalog_dir()
        assets = self.build_assets()
        ops = self.build_operations() if operations else []
        return dg.Definitions(
            assets=assets,
            jobs=[self.build_job(assets)],
            sensors=[o for o in ops if isinstance(o, dg.SensorDefinition)],
            schedules=[o for o in ops if isinstance(o, dg.ScheduleDefinition)],
            resources={
                RESOURCE_KEY: shared_resource(bria or default_resource()),
                self.io_manager_key: self.io_manager(),
            },
        )


def default_resource() -> BriaResource:
    """``BriaResource(fal_key=EnvVar("FAL_KEY"))`` when ``FAL_KEY`` is set, else the engine."""
    if os.environ.get("FAL_KEY"):
        return BriaResource(fal_key=dg.EnvVar("FAL_KEY"))
    return BriaResource()


_SHARED: dict[str, BriaResource] = {}


def shared_resource(bria: BriaResource) -> BriaResource:
    """One instance per configuration, so that pipelines built separately with the same
    resource settings merge into one code location (``Definitions.merge`` compares
    resources by identity)."""
    key = repr(sorted(bria.model_dump().items()))
    return _SHARED.setdefault(f"{type(bria).__qualname__}:{key}", bria)


def build_definitions(
    settings: PipelineSettings | None = None,
    *,
    name: str = DEFAULT_PIPELINE_NAME,
    storage: PipelineStorage | str = "bria_data",
    bria: BriaResource | None = None,
    translator: BriaTranslator | None = None,
    operations: bool = True,
    extra: Sequence[Any] = (),
) -> dg.Definitions:
    """One pipeline as ``dg.Definitions``: assets, checks, job ``name``, its IO manager, the
    catalog sensor and schedules (``operations=False`` leaves them out) and ``bria``.

    Merge several with ``dg.Definitions.merge``; ``extra`` takes your own assets,
    sensors, schedules or checks.
    """
    pipeline = ProductImagePipeline(
        name=name,
        settings=settings or PipelineSettings(),
        storage=storage,
        translator=translator or BriaTranslator(),
    )
    defs = pipeline.build_definitions(bria, operations=operations)
    if not extra:
        return defs
    return dg.Definitions.merge(defs, _as_definitions(extra))


def _as_definitions(extra: Sequence[Any]) -> dg.Definitions:
    kinds: dict[str, list[Any]] = {"sensors": [], "schedules": [], "asset_checks": [], "assets": []}
    for item in extra:
        if isinstance(item, dg.SensorDefinition):
            kinds["sensors"].append(item)
        elif isinstance(item, dg.ScheduleDefinition):
            kinds["schedules"].append(item)
        elif isinstance(item, dg.AssetChecksDefinition):
            kinds["asset_checks"].append(item)
        else:
            kinds["assets"].append(item)
    return dg.Definitions(**{k: v for k, v in kinds.items() if v})
