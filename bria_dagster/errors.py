"""Exception classes raised by bria-dagster.

Every error says what was wrong, with which input, and what to do. None of them
ever carries the fal key: messages are built from request fields and server
replies only, and :func:`redact` scrubs anything that slips through.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

__all__ = [
    "BriaError",
    "BudgetExceededError",
    "CatalogError",
    "CodeLocationError",
    "EmptyCutoutError",
    "EngineError",
    "FalRequestError",
    "FalServiceError",
    "FetchFailedError",
    "FetchRefusedError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "IndexUnavailableError",
    "LineageNotFoundError",
    "OutputVerificationError",
    "PipelineChoiceError",
    "PresetError",
    "RecordTableError",
    "RequestValidationError",
    "RetriesExhaustedError",
    "SecretInConfigError",
    "StorageAccessError",
    "UnknownBatchError",
    "redact",
    "storage_access",
    "storage_access_error",
]


class BriaError(Exception):
    """Base class of every error bria-dagster raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class RequestValidationError(BriaError, ValueError):
    """A request failed validation before anything was sent (nothing was paid)."""


class ImageDecodeError(BriaError, ValueError):
    """Bytes that should be an image could not be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image exceeds the configured pixel limit (decompression-bomb guard)."""


class FetchRefusedError(BriaError):
    """An input URL was refused by the fetch policy (scheme, host, size or time)."""


class FetchFailedError(BriaError):
    """An allowed input URL could not be fetched (404, timeout, too large, connection error).

    ``url`` is the sanitised URL (no userinfo, no query string); ``status_code``
    is the HTTP status when the server answered.
    """

    def __init__(self, message: str, *, url: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class FalRequestError(BriaError):
    """fal rejected a request (4xx such as 422); retrying will not help.

    ``detail`` holds fal's own explanation.
    """

    def __init__(self, message: str, *, status_code: int | None = None, detail: object = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class FalServiceError(BriaError):
    """fal failed to process a request (the job ended in error, or 5xx)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, request_id: str | None = None
    ):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id


class RetriesExhaustedError(BriaError):
    """A transient fault persisted through every allowed attempt."""


class OutputVerificationError(BriaError):
    """A result file did not decode, or did not match what the response announced."""


class EngineError(BriaError):
    """The embedded local engine could not process an image."""


class BudgetExceededError(BriaError):
    """Running the batch would spend more than the configured budget."""


class CatalogError(BriaError, ValueError):
    """A catalog batch file is unreadable or has the wrong shape."""


class ConfigurationError(BriaError, ValueError):
    """A pipeline or component setting is invalid or unsafe."""


class CodeLocationError(BriaError):
    """A code location (``-f`` file, ``-m`` module, or a project's ``pyproject.toml``
    target) could not be found or did not load."""


class PipelineChoiceError(BriaError, ValueError):
    """Which pipeline is meant cannot be told: the code location has none, several and
    none was named, or not the one named."""


class PresetError(BriaError, ValueError):
    """A channel preset (packshot) is unknown or invalid: the message names the preset, the
    field and what is allowed."""


class EmptyCutoutError(BriaError, ValueError):
    """A cutout has no product pixels at all (its alpha is transparent everywhere), so there
    is nothing to place on a packshot."""


class SecretInConfigError(BriaError):
    """The fal key was written into configuration instead of read from ``FAL_KEY``.

    Not a ``ValueError`` on purpose: pydantic would wrap one in a ``ValidationError``
    that repeats the offending input, the key included.
    """


class StorageAccessError(BriaError, PermissionError):
    """The storage location (``s3://...``) refused us: wrong or missing credentials, no
    permission, or an unreachable endpoint. Nothing was written under its final name."""

    def __init__(self, message: str, *, url: str, action: str, cause: str) -> None:
        super().__init__(message)
        self.url = url
        self.action = action
        self.cause = redact(cause)


class RecordTableError(BriaError):
    """A record table under ``<base>/tables`` could not be read with the ImageRecord schema
    (not Parquet, or columns of other types): only pipeline-written tables belong there."""


class LineageNotFoundError(BriaError, LookupError):
    """An image, sku or source named in a lineage query is not in the record tables."""


class UnknownBatchError(BriaError, LookupError):
    """The storage holds no step table of this batch for this pipeline (the audit report);
    ``known`` lists the batches it has."""

    def __init__(self, message: str, *, batch: str, known: list[str]) -> None:
        super().__init__(message)
        self.batch = batch
        self.known = known


class IndexUnavailableError(BriaError):
    """The SQLite lineage index cannot be opened or written here (read-only store, corrupt
    file); the tables themselves can still be read (``--no-index``)."""


AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)


def storage_access_error(url: str, exc: BaseException, action: str) -> StorageAccessError | None:
    """``exc`` as one clear :class:`StorageAccessError` naming ``url`` and what to check, or
    None when it is not an access problem (a missing file stays a ``FileNotFoundError``).

    Recognised: ``PermissionError`` (s3fs's translation of InvalidAccessKeyId,
    SignatureDoesNotMatch, AccessDenied, ExpiredToken) and botocore's own errors
    (no credentials, partial credentials, endpoint unreachable).
    """
    if isinstance(exc, StorageAccessError):
        return exc
    botocore = type(exc).__module__.startswith(("botocore", "aiobotocore"))
    if not (isinstance(exc, PermissionError) or botocore):
        return None
    cause = f"{type(exc).__name__}: {exc}"
    hint = (
        "check the S3 credentials and endpoint: " + ", ".join(AWS_VARIABLES) + " (or ~/.aws)"
        if url.startswith(("s3://", "s3a://"))
        else "check the credentials and permissions of this storage location"
    )
    return StorageAccessError(
        f"cannot {action} {url}: access refused ({cause}); {hint}",
        url=url,
        action=action,
        cause=cause,
    )


@contextlib.contextmanager
def storage_access(url: str, action: str) -> Iterator[None]:
    """Turn an access failure inside the block into a :class:`StorageAccessError`."""
    try:
        yield
    except Exception as exc:
        error = storage_access_error(url, exc, action)
        if error is None or error is exc:
            raise
        raise error from exc


# An "Authorization: Key <id>:<secret>" credential echoed back in some text: the token
# after "Key" has a digit or a colon (prose such as "the key is" or "FAL_KEY variable" is
# left alone).
_KEY_PATTERN = re.compile(r"(\bKey\s+)(?=[\w\-.]*[:\d])[\w\-:.]{6,}", re.IGNORECASE)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Remove the fal key (and any extra ``secrets``) from ``text``."""
    candidates = list(secrets or [])
    aws_secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if aws_secret and len(aws_secret) >= 8:
        candidates.append(aws_secret)
    env_key = os.environ.get("FAL_KEY")
    if env_key:
        candidates.append(env_key)
        # fal keys are "<key_id>:<key_secret>": never leak either half.
        candidates.extend(part for part in env_key.split(":") if len(part) >= 8)
    for secret in candidates:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(r"\1***", text)
