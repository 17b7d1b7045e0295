"""bria-dagster: Bria image endpoints (fal.ai or an embedded offline engine) as Dagster assets."""

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

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "AspectRatio",
    "BriaError",
    "BriaRequest",
    "BudgetExceededError",
    "CatalogError",
    "EndpointSpec",
    "EngineError",
    "ExpandRequest",
    "FalRequestError",
    "FalServiceError",
    "FetchRefusedError",
    "Image",
    "ImageDecodeError",
    "ImageTooLargeError",
    "OutputVerificationError",
    "RemoveBackgroundRequest",
    "ReplaceBackgroundRequest",
    "RequestValidationError",
    "RetriesExhaustedError",
    "build_request",
    "endpoint_for",
    "request_fingerprint",
]
