"""bria-dagster: Bria image endpoints (fal.ai or an embedded offline engine) as Dagster assets."""

from ._version import __version__
from .assets import CATALOG_PARTITIONS, PipelineSettings, build_product_image_assets
from .backends.base import Backend, BackendResult, OutputImage
from .backends.fal import FalBackend
from .backends.local import LocalBackend
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
    EngineError,
    FalRequestError,
    FalServiceError,
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
from .lineage import LineageIndex, derived, load_records, trace
from .pipeline import MAIN_JOB_NAME, build_definitions
from .records import IMAGE_RECORD_SCHEMA
from .resource import BriaResource
from .retry import RetryPolicy
from .runner import BatchProgress, ItemOutcome, run_batch
from .store import ImageStore

__all__ = [
    "CATALOG_PARTITIONS",
    "ENDPOINTS",
    "IMAGE_RECORD_SCHEMA",
    "MAIN_JOB_NAME",
    "AspectRatio",
    "Backend",
    "BackendResult",
    "BatchProgress",
    "BriaError",
    "BriaRequest",
    "BriaResource",
    "BudgetExceededError",
    "CatalogError",
    "EndpointSpec",
    "EngineError",
    "ExpandRequest",
    "FalBackend",
    "FalRequestError",
    "FalServiceError",
    "FetchPolicy",
    "FetchRefusedError",
    "Image",
    "ImageDecodeError",
    "ImageRecordIOManager",
    "ImageStore",
    "ImageTooLargeError",
    "ItemOutcome",
    "LineageIndex",
    "LocalBackend",
    "OutputImage",
    "OutputVerificationError",
    "PipelineSettings",
    "RemoveBackgroundRequest",
    "ReplaceBackgroundRequest",
    "RequestJournal",
    "RequestValidationError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "__version__",
    "build_definitions",
    "build_product_image_assets",
    "build_request",
    "derived",
    "endpoint_for",
    "load_records",
    "request_fingerprint",
    "run_batch",
    "trace",
]
