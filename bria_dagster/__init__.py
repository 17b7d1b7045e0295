"""bria-dagster: Bria image endpoints (fal.ai or an embedded offline engine) as Dagster assets.

The names a ``definitions.py`` uses are re-exported here and imported on first use
(PEP 562), so that ``bria-dagster lineage ...`` answers without importing Dagster.
Everything else stays importable from its module (``bria_dagster.runner.run_batch``,
``bria_dagster.backends.fal.FalBackend``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "BriaError": "errors",
    "BriaResource": "resource",
    "BriaStepProps": "translator",
    "BriaTranslator": "translator",
    "BudgetExceededError": "errors",
    "CatalogError": "errors",
    "CheckSettings": "checks",
    "ConfigurationError": "errors",
    "IMAGE_RECORD_SCHEMA": "records",
    "ImageRecordIOManager": "io_manager",
    "PipelineSettings": "assets",
    "PipelineStorage": "storage",
    "ProductImagePipeline": "pipeline",
    "ProductImagesComponent": "component",
    "REFRESH_TAG": "assets",
    "RequestValidationError": "errors",
    "build_definitions": "pipeline",
    "derived": "lineage",
    "load_records": "lineage",
    "trace": "lineage",
    "write_audit_report": "report",
}

__all__ = [
    "IMAGE_RECORD_SCHEMA",
    "REFRESH_TAG",
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
    from .assets import REFRESH_TAG, PipelineSettings
    from .checks import CheckSettings
    from .component import ProductImagesComponent
    from .errors import (
        BriaError,
        BudgetExceededError,
        CatalogError,
        ConfigurationError,
        RequestValidationError,
    )
    from .io_manager import ImageRecordIOManager
    from .lineage import derived, load_records, trace
    from .pipeline import ProductImagePipeline, build_definitions
    from .records import IMAGE_RECORD_SCHEMA
    from .report import write_audit_report
    from .resource import BriaResource
    from .storage import PipelineStorage
    from .translator import BriaStepProps, BriaTranslator
