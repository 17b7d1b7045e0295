"""A pipeline's identity: its name, settings, storage and translator, and every name it
derives (asset keys, partitions, job, IO manager key, sensor, schedules).

The asset factory and the automation read a pipeline through this class; the
:class:`~bria_dagster.orchestration.pipeline.ProductImagePipeline` users build adds the
methods that build its definitions from them (so neither imports the other).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import dagster as dg

from ..client.contracts import endpoint_for
from ..errors import ConfigurationError
from ..records.storage import PipelineStorage
from ..steps.settings import PipelineSettings
from .batches import partitions_name
from .catalog_dir import require_catalog_dir
from .io_manager import ImageRecordIOManager
from .translator import API_STEPS, BriaStepProps, BriaTranslator

__all__ = ["DEFAULT_PIPELINE_NAME", "PipelineIdentity"]

DEFAULT_PIPELINE_NAME = "product_images"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _DerivedName:
    """A name the pipeline adds to a code location: its own ``name`` and a suffix."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __get__(self, pipeline: PipelineIdentity, owner: type | None = None) -> str:
        return f"{pipeline.name}{self.suffix}"


@dataclass(frozen=True)
class PipelineIdentity:
    """One product-image pipeline's identity: the fields of :class:`ProductImagePipeline`
    (documented there) and the names derived from them."""

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

    job_name = _DerivedName("")
    io_manager_key = _DerivedName("_io_manager")
    sensor_name = _DerivedName("_catalog_sensor")
    retry_schedule_name = _DerivedName("_retry_failed_daily")
    refresh_schedule_name = _DerivedName("_refresh_weekly")

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

    def io_manager(self) -> ImageRecordIOManager:
        """The IO manager of this pipeline's step tables (its own storage)."""
        return ImageRecordIOManager(base_dir=self.store.base)

    def require_catalog_dir(self) -> None:
        """Raise :class:`~bria_dagster.errors.ConfigurationError` now, naming the path, when
        ``settings.catalog_dir`` is a local folder that does not exist (see
        :func:`require_catalog_dir`)."""
        require_catalog_dir(self.settings.catalog_dir, owner=f"pipeline {self.name!r}")
