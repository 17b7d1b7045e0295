"""bria-dagster: Bria image endpoints (fal.ai or an embedded offline engine) as Dagster assets.

The names a ``definitions.py`` uses are re-exported here and imported on first use
(PEP 562), so that ``bria-dagster lineage ...`` answers without importing Dagster.
Everything else stays importable from its module (``bria_dagster.client.runner.run_batch``,
``bria_dagster.client.backends.fal.FalBackend``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "BriaClient": "client.client",
    "BriaError": "errors",
    "BriaResource": "orchestration.resource",
    "BriaStepProps": "orchestration.translator",
    "BriaTranslator": "orchestration.translator",
    "BudgetExceededError": "errors",
    "CatalogError": "errors",
    "CheckSettings": "steps.settings",
    "ConfigurationError": "errors",
    "IMAGE_RECORD_SCHEMA": "records.tables",
    "ImageRecordIOManager": "orchestration.io_manager",
    "PipelineSettings": "steps.settings",
    "PipelineStorage": "records.storage",
    "ProductImagePipeline": "orchestration.pipeline",
    "ProductImagesComponent": "orchestration.component",
    "REFRESH_TAG": "steps.settings",
    "RequestValidationError": "errors",
    "build_definitions": "orchestration.pipeline",
    "derived": "lineage.frame",
    "load_records": "lineage.frame",
    "trace": "lineage.frame",
    "write_audit_report": "lineage.report",
}

__all__ = [
    "IMAGE_RECORD_SCHEMA",
    "REFRESH_TAG",
    "BriaClient",
    "BriaError",
    "BriaResource",
    "BriaStepProps",
    "BriaTranslator",
    "BudgetExceededError",
    "CatalogError",
    "CheckSettings",
    "ConfigurationError",
    "ImageRecordIOManager",
    "PipelineSettings",
    "PipelineStorage",
    "ProductImagePipeline",
    "ProductImagesComponent",
    "RequestValidationError",
    "__version__",
    "build_definitions",
    "derived",
    "load_records",
    "trace",
    "write_audit_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bria_dagster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .client.client import BriaClient
    from .errors import (
        BriaError,
        BudgetExceededError,
        CatalogError,
        ConfigurationError,
        RequestValidationError,
    )
    from .lineage.frame import derived, load_records, trace
    from .lineage.report import write_audit_report
    from .orchestration.component import ProductImagesComponent
    from .orchestration.io_manager import ImageRecordIOManager
    from .orchestration.pipeline import ProductImagePipeline, build_definitions
    from .orchestration.resource import BriaResource
    from .orchestration.translator import BriaStepProps, BriaTranslator
    from .records.storage import PipelineStorage
    from .records.tables import IMAGE_RECORD_SCHEMA
    from .steps.settings import REFRESH_TAG, CheckSettings, PipelineSettings
