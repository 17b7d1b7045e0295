"""``ProductImagesComponent``: the whole pipeline from a ``defs.yaml`` in a ``dg`` project.

.. code-block:: yaml

    # src/<project>/defs/product_images/defs.yaml
    type: bria_dagster.ProductImagesComponent
    attributes:
      catalog_dir: catalogs            # one <batch>.csv|.parquet|.jsonl per batch
      storage: s3://my-bucket/bria     # or a folder; images/ and tables/ go here
      steps: [remove, replace, expand]
      prompt_template: "{category} on a light oak table, soft daylight"
      aspect_ratios: ["1:1", "4:5"]
      resource:
        max_concurrency: 16
        budget_usd: 50

It builds what :func:`~bria_dagster.build_definitions` builds (the assets, their
checks, the ``product_images`` job, ``BriaResource`` and the Parquet IO manager)
and, unless ``operations: false``, the catalog sensor and the retry and refresh
schedules. Relative ``catalog_dir``, ``storage`` and ``file_roots`` are taken from
the project root. The fal key is read from the ``FAL_KEY`` environment variable
only: a key written into YAML would be shown with the resource's configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from .assets import PipelineSettings
from .checks import CheckSettings
from .errors import ConfigurationError
from .pipeline import DEFAULT_PIPELINE_NAME, ProductImagePipeline
from .resource import BriaResource

__all__ = ["ProductImagesComponent"]

# Attributes passed to PipelineSettings when given; left out, its defaults apply.
_SETTINGS_FIELDS = (
    "steps",
    "prompt_template",
    "ref_image_url",
    "negative_prompt",
    "num_images",
    "seed",
    "aspect_ratios",
    "fetch_concurrency",
)


class ProductImagesComponent(dg.Component, dg.Model, dg.Resolvable):
    """Bria product images: catalog batch -> cutouts -> scenes -> expansions, as assets."""

    catalog_dir: str = Field(
        description="Folder or fsspec URL with one catalog file per batch (relative: to the "
        "project root)."
    )
    storage: str = Field(
        default="bria_data",
        description="Folder or fsspec URL for images/ and tables/ (relative: to the project root).",
    )
    name: str = Field(
        default=DEFAULT_PIPELINE_NAME,
        description="The pipeline's name: prefix of its asset keys, and the name of its job, "
        "partitions, sensor, schedules and IO manager (one per component instance).",
    )
    steps: list[str] | None = Field(
        default=None, description="A prefix of [remove, replace, expand]; default all three."
    )
    prompt_template: str | None = Field(
        default=None, description="Replace prompt; may use {sku} and any catalog column."
    )
    ref_image_url: str | None = Field(
        default=None, description="Reference background instead of a prompt."
    )
    negative_prompt: str | None = None
    num_images: int | None = Field(default=None, description="Scenes per cutout (1-4).")
    seed: int | None = Field(default=None, description="Default seed (catalog 'seed' wins).")
    aspect_ratios: list[str] | None = Field(
        default=None, description="Expansions per scene, e.g. ['1:1', '4:5']."
    )
    fetch_concurrency: int | None = Field(
        default=None, description="Source images fetched at once."
    )
    checks: dict[str, Any] | None = Field(
        default=None, description="Asset check thresholds (CheckSettings fields)."
    )
    resource: dict[str, Any] = Field(
        default_factory=dict,
        description="BriaResource settings (backend, max_concurrency, budget_usd, ...); "
        "never fal_key: set the FAL_KEY environment variable.",
    )
    operations: bool = Field(
        default=True, description="Also build the catalog sensor and the two schedules."
    )

    def pipeline_settings(self, root: Path) -> PipelineSettings:
        """The :class:`PipelineSettings` these attributes describe (paths from ``root``)."""
        given = {name: getattr(self, name) for name in _SETTINGS_FIELDS}
        given = {name: value for name, value in given.items() if value is not None}
        if self.checks is not None:
            given["checks"] = CheckSettings(**self.checks)
        return PipelineSettings(catalog_dir=_under(root, self.catalog_dir), **given)

    def bria_resource(self, root: Path) -> BriaResource:
        """The :class:`BriaResource`: ``resource`` settings, the key from ``FAL_KEY``."""
        options = dict(self.resource)
        if "fal_key" in options:
            raise ConfigurationError(
                "ProductImagesComponent: remove `fal_key` from `resource`; the key is read "
                "from the FAL_KEY environment variable (a key in YAML would be shown with "
                "the resource's configuration)"
            )
        if "storage" in options:
            raise ConfigurationError(
                "ProductImagesComponent: set `storage` at the top level, not in `resource` "
                "(it belongs to the pipeline: tables, images and journal share it)"
            )
        options["file_roots"] = [_under(root, p) for p in options.get("file_roots", ["."])]
        if os.environ.get("FAL_KEY"):
            options["fal_key"] = dg.EnvVar("FAL_KEY")
        return BriaResource(**options)

    def pipeline(self, root: Path) -> ProductImagePipeline:
        """The :class:`ProductImagePipeline` these attributes describe (paths from ``root``)."""
        return ProductImagePipeline(
            name=self.name,
            settings=self.pipeline_settings(root),
            storage=_under(root, self.storage),
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        root = Path(context.project_root)
        return self.pipeline(root).build_definitions(
            self.bria_resource(root), operations=self.operations
        )


def _under(root: Path, location: str) -> str:
    """``location`` as given when it is a URL or absolute, else under ``root``."""
    if "://" in location or os.path.isabs(location):
        return location
    return str(root / location)
