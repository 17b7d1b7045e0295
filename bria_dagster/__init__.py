"""bria-dagster: Bria image endpoints (fal.ai or an embedded offline engine) as Dagster assets.

The public API is re-exported here and imported on first use (PEP 562), so that
``bria-dagster lineage ...`` answers without importing Dagster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "REFRESH_TAG": "assets",
    "CheckSettings": "checks",
    "build_retry_schedule": "automation",
    "build_refresh_schedule": "automation",
    "build_operations": "automation",
    "build_catalog_sensor": "automation",
    "AspectRatio": "endpoints",
    "Backend": "backends.base",
    "BackendResult": "backends.base",
    "BatchProgress": "runner",
    "BriaError": "errors",
    "BriaRequest": "endpoints",
    "BriaResource": "resource",
    "BudgetExceededError": "errors",
    "build_definitions": "pipeline",
    "build_product_image_assets": "assets",
    "build_request": "endpoints",
    "CATALOG_PARTITIONS": "assets",
    "CatalogError": "errors",
    "ConfigurationError": "errors",
    "derived": "lineage",
    "endpoint_for": "endpoints",
    "ENDPOINTS": "endpoints",
    "EndpointSpec": "endpoints",
    "EngineError": "errors",
    "ExpandRequest": "endpoints",
    "FalBackend": "backends.fal",
    "FalRequestError": "errors",
    "FalServiceError": "errors",
    "FetchFailedError": "errors",
    "FetchPolicy": "fetch",
    "FetchRefusedError": "errors",
    "Image": "endpoints",
    "IMAGE_RECORD_SCHEMA": "records",
    "ImageDecodeError": "errors",
    "ImageRecordIOManager": "io_manager",
    "ImageStore": "store",
    "ImageTooLargeError": "errors",
    "ItemOutcome": "runner",
    "LineageIndex": "lineage",
    "LineageNotFoundError": "lineage",
    "load_records": "lineage",
    "LocalBackend": "backends.local",
    "MAIN_JOB_NAME": "pipeline",
    "OutputImage": "backends.base",
    "OutputVerificationError": "errors",
    "PipelineSettings": "assets",
    "ProductImagesComponent": "component",
    "RemoveBackgroundRequest": "endpoints",
    "ReplaceBackgroundRequest": "endpoints",
    "request_fingerprint": "endpoints",
    "RequestJournal": "journal",
    "RequestValidationError": "errors",
    "RetriesExhaustedError": "errors",
    "RetryPolicy": "retry",
    "run_batch": "runner",
    "trace": "lineage",
}

__all__ = [
    "CATALOG_PARTITIONS",
    "ENDPOINTS",
    "IMAGE_RECORD_SCHEMA",
    "MAIN_JOB_NAME",
    "REFRESH_TAG",
    "AspectRatio",
    "Backend",
    "BackendResult",
    "BatchProgress",
    "BriaError",
    "BriaRequest",
    "BriaResource",
    "BudgetExceededError",
    "CatalogError",
    "CheckSettings",
    "ConfigurationError",
    "EndpointSpec",
    "EngineError",
    "ExpandRequest",
    "FalBackend",
    "FalRequestError",
    "FalServiceError",
    "FetchFailedError",
    "FetchPolicy",
    "FetchRefusedError",
    "Image",
    "ImageDecodeError",
    "ImageRecordIOManager",
    "ImageStore",
    "ImageTooLargeError",
    "ItemOutcome",
    "LineageIndex",
    "LineageNotFoundError",
    "LocalBackend",
    "OutputImage",
    "OutputVerificationError",
    "PipelineSettings",
    "ProductImagesComponent",
    "RemoveBackgroundRequest",
    "ReplaceBackgroundRequest",
    "RequestJournal",
    "RequestValidationError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "__version__",
    "build_catalog_sensor",
    "build_definitions",
    "build_operations",
    "build_product_image_assets",
    "build_refresh_schedule",
    "build_request",
    "build_retry_schedule",
    "derived",
    "endpoint_for",
    "load_records",
    "request_fingerprint",
    "run_batch",
    "trace",
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
    from .assets import (
        CATALOG_PARTITIONS,
        REFRESH_TAG,
        PipelineSettings,
        build_product_image_assets,
    )
    from .automation import (
        build_catalog_sensor,
        build_operations,
        build_refresh_schedule,
        build_retry_schedule,
    )
    from .backends.base import Backend, BackendResult, OutputImage
    from .backends.fal import FalBackend
    from .backends.local import LocalBackend
    from .checks import CheckSettings
    from .component import ProductImagesComponent
    from .endpoints import (
        ENDPOINTS,
        AspectRatio,
        BriaRequest,
        EndpointSpec,
        ExpandRequest,
        Image,
        RemoveBackgroundRequest,
        ReplaceBackgroundRequest,
        build_request,
        endpoint_for,
        request_fingerprint,
    )
    from .errors import (
        BriaError,
        BudgetExceededError,
        CatalogError,
        ConfigurationError,
        EngineError,
        FalRequestError,
        FalServiceError,
        FetchFailedError,
        FetchRefusedError,
        ImageDecodeError,
        ImageTooLargeError,
        OutputVerificationError,
        RequestValidationError,
        RetriesExhaustedError,
    )
    from .fetch import FetchPolicy
    from .io_manager import ImageRecordIOManager
    from .journal import RequestJournal
    from .lineage import LineageIndex, LineageNotFoundError, derived, load_records, trace
    from .pipeline import MAIN_JOB_NAME, build_definitions
    from .records import IMAGE_RECORD_SCHEMA
    from .resource import BriaResource
    from .retry import RetryPolicy
    from .runner import BatchProgress, ItemOutcome, run_batch
    from .store import ImageStore
