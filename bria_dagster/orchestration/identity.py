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

from ..client.endpoints import endpoint_for
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


@dataclass(frozen=True)
class PipelineIdentity:
    """One product-image pipeline's identity (see :class:`ProductImagePipeline`).

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

    def io_manager(self) -> ImageRecordIOManager:
        """The IO manager of this pipeline's step tables (its own storage)."""
        return ImageRecordIOManager(base_dir=self.store.base)

    def require_catalog_dir(self) -> None:
        """Raise :class:`~bria_dagster.errors.ConfigurationError` now, naming the path, when
        ``settings.catalog_dir`` is a local folder that does not exist (see
        :func:`require_catalog_dir`)."""
        require_catalog_dir(self.settings.catalog_dir, owner=f"pipeline {self.name!r}")
