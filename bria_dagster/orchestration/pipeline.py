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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from ..client.contracts import endpoint_for
from ..errors import ConfigurationError
from ..records.storage import PipelineStorage
from ..steps.settings import PipelineSettings
from .assets import build_product_image_assets
from .automation import build_catalog_sensor, build_refresh_schedule, build_retry_schedule
from .batches import partitions_name
from .io_manager import ImageRecordIOManager
from .resource import BriaResource
from .translator import API_STEPS, BriaStepProps, BriaTranslator

__all__ = [
    "DEFAULT_PIPELINE_NAME",
    "ProductImagePipeline",
    "build_definitions",
    "require_catalog_dir",
]

DEFAULT_PIPELINE_NAME = "product_images"
RESOURCE_KEY = "bria"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ProductImagePipeline:
    """One product-image pipeline.

    Args:
        name: names everything the pipeline adds (see the module docs); letters, digits
            and ``_``, starting with a letter.
        settings: what the steps do.
        storage: a folder, an fsspec URL or a :class:`PipelineStorage`.
        translator: how steps appear as assets (key, group, owners, tags, ...).
    """

    name: str = DEFAULT_PIPELINE_NAME
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    storage: PipelineStorage | str = "bria_data"
    translator: BriaTranslator = field(default_factory=BriaTranslator)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"pipeline name {self.name!r} is not usable as a Dagster name: use letters, "
                "digits and '_', starting with a letter (e.g. 'spring_catalog')"
            )
        object.__setattr__(self, "storage", PipelineStorage.of(self.storage))

    # -- derived names -------------------------------------------------------------------

    @property
    def store(self) -> PipelineStorage:
        """The storage object (``storage`` normalised)."""
        assert isinstance(self.storage, PipelineStorage)
        return self.storage

    @property
    def job_name(self) -> str:
        return self.name

    @property
    def io_manager_key(self) -> str:
        return f"{self.name}_io_manager"

    @property
    def sensor_name(self) -> str:
        return f"{self.name}_catalog_sensor"

    @property
    def retry_schedule_name(self) -> str:
        return f"{self.name}_retry_failed_daily"

    @property
    def refresh_schedule_name(self) -> str:
        return f"{self.name}_refresh_weekly"

    @property
    def partitions_def(self) -> dg.DynamicPartitionsDefinition:
        """One partition per catalog batch file (its file name without extension)."""
        return dg.DynamicPartitionsDefinition(name=partitions_name(self.name))

    def asset_spec(self, step: str) -> dg.AssetSpec:
        """The translated spec of ``step`` (a key of ``translator.STEP_ASSETS``)."""
        props = BriaStepProps(
            pipeline=self.name,
            step=step,
            endpoint_id=endpoint_for(step).endpoint_id if step in API_STEPS else None,
        )
        return self.translator.get_asset_spec(props)

    def asset_key(self, step: str) -> dg.AssetKey:
        return self.asset_spec(step).key

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

    def io_manager(self) -> ImageRecordIOManager:
        """The IO manager of this pipeline's step tables (its own storage)."""
        return ImageRecordIOManager(base_dir=self.store.base)

    def require_catalog_dir(self) -> None:
        """Raise :class:`~bria_dagster.errors.ConfigurationError` now, naming the path, when
        ``settings.catalog_dir`` is a local folder that does not exist (see
        :func:`require_catalog_dir`)."""
        require_catalog_dir(self.settings.catalog_dir, owner=f"pipeline {self.name!r}")

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


def require_catalog_dir(catalog_dir: str, *, owner: str, written: str | None = None) -> None:
    """A local ``catalog_dir`` must be an existing folder, or :class:`ConfigurationError`
    names it (``owner``: who set it; ``written``: the value as the user wrote it, when
    ``catalog_dir`` was resolved from it). fsspec URLs (s3://, gs://, ...) are not checked:
    that would be a network call, with credentials, on every code-location load."""
    parts = urlsplit(catalog_dir)
    if parts.scheme not in ("", "file"):
        return
    folder = Path(parts.path if parts.scheme == "file" else catalog_dir)
    if not folder.is_dir():
        shown = written if written is not None else catalog_dir
        raise ConfigurationError(
            f"{owner}: catalog_dir {shown!r} is not a folder ({folder.absolute()} does not "
            "exist): create it (the sensor adds one partition per catalog file put there) or "
            "set catalog_dir to an existing folder or an fsspec URL"
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
