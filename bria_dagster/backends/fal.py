"""FalBackend: Bria on fal.ai through ``fal_client.AsyncClient``'s queue API.

One request = submit -> journal the request id -> poll status -> fetch the
result -> download and verify every output file. Each network step is retried
per :class:`~bria_dagster.retry.RetryPolicy`; a timeout or task cancellation
cancels the fal request so nothing keeps running (and billing) unobserved.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fal_client
import httpx
from fal_client.client import Completed

from ..endpoints import BriaRequest, endpoint_for, request_fingerprint
from ..errors import (
    BriaError,
    FalRequestError,
    FalServiceError,
    ImageDecodeError,
    OutputVerificationError,
    RequestValidationError,
    redact,
)
from ..images import decode_image, parse_data_uri, sniff_content_type, to_data_uri
from ..journal import RequestJournal
from ..retry import RetryLog, RetryPolicy, with_retries
from .base import BackendResult, OutputImage

__all__ = ["FalBackend"]

logger = logging.getLogger("bria_dagster.fal")

# fal-client logs its own internal retries at DEBUG; we count them per request.
_current_log: contextvars.ContextVar[RetryLog | None] = contextvars.ContextVar(
    "bria_current_retry_log", default=None
)


class _FalClientRetryCounter(logging.Handler):
    """Attributes fal-client's internal retries to the request whose task logged them."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not text.startswith("Retrying request"):
            return
        log = _current_log.get()
        reason = "fal-client: " + redact(text.split(" due to ", 1)[-1])[:120]
        if log is not None:
            log.reasons.append(reason)
        logger.info("%s", reason)


def _install_retry_counter() -> None:
    fal_logger = logging.getLogger("fal_client.client")
    if not any(isinstance(h, _FalClientRetryCounter) for h in fal_logger.handlers):
        fal_logger.addHandler(_FalClientRetryCounter(level=logging.DEBUG))
        if fal_logger.level == logging.NOTSET or fal_logger.level > logging.DEBUG:
            fal_logger.setLevel(logging.DEBUG)
        # Its DEBUG lines reach users through our INFO line instead.
        fal_logger.propagate = False


class FalBackend:
    """Runs validated Bria requests on fal.ai.

    Args:
        key: the fal key; ``None`` lets fal-client read ``FAL_KEY``.
        journal: where accepted request ids are recorded before they are awaited.
        retry: retry policy for submit, status, result and downloads.
        request_timeout_s: overall limit per request, queue wait included; on
            expiry the fal request is cancelled.
        inline_max_bytes: local inputs up to this size go as data URIs; larger
            ones through fal storage upload.
        max_output_bytes: refuse result files larger than this.
    """

    name = "fal"

    def __init__(
        self,
        key: str | None = None,
        *,
        journal: RequestJournal | None = None,
        retry: RetryPolicy | None = None,
        request_timeout_s: float = 900.0,
        poll_interval_s: float = 0.1,
        max_poll_interval_s: float = 1.0,
        inline_max_bytes: int = 2 * 1024 * 1024,
        max_output_bytes: int = 100 * 1024 * 1024,
        max_pixels: int = 50_000_000,
    ) -> None:
        self._key = key
        self._client = fal_client.AsyncClient(key=key)
        self.journal = journal or RequestJournal(None)
        self.retry = retry or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.inline_max_bytes = inline_max_bytes
        self.max_output_bytes = max_output_bytes
        self.max_pixels = max_pixels
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        _install_retry_counter()

    def __repr__(self) -> str:
        return f"FalBackend(key={'set' if self._key else 'from env'}, journal={self.journal!r})"

    @property
    def _secrets(self) -> list[str]:
        return [self._key] if self._key else []

    async def aclose(self) -> None:
        await self._http.aclose()
        client = self._client.__dict__.get("_client")
        if isinstance(client, httpx.AsyncClient):  # fal-client caches its httpx client here
            await client.aclose()

    # -- inputs -------------------------------------------------------------------------

    async def _local_bytes(self, value: str | Path | bytes) -> bytes | None:
        """Bytes of an input fal cannot fetch itself (local data, s3, gs); None for URLs."""
        if isinstance(value, bytes):
            return value
        if isinstance(value, Path):
            return await asyncio.to_thread(value.read_bytes)
        scheme = urlsplit(value).scheme.lower()
        if scheme == "file":
            return await asyncio.to_thread(Path(urlsplit(value).path).read_bytes)
        if scheme in {"s3", "gs"}:
            import fsspec

            def read() -> bytes:
                with fsspec.open(value, "rb") as fh:
                    return fh.read()

            return await asyncio.to_thread(read)
        return None

    async def _resolve_input(self, value: str | Path | bytes, log: RetryLog) -> str:
        try:
            data = await self._local_bytes(value)
        except OSError as exc:
            raise RequestValidationError(f"cannot read input image {value!s:.200}: {exc}") from None
        if data is None:
            return value  # type: ignore[return-value]  # http(s) or data: URL, sent as is
        content_type = sniff_content_type(data)
        if len(data) <= self.inline_max_bytes:
            return to_data_uri(data, content_type)
        return await with_retries(
            "upload",
            lambda: self._client.upload(data, content_type),
            self.retry,
            log,
            secrets=self._secrets,
        )

    async def _arguments(self, request: BriaRequest, log: RetryLog) -> dict[str, Any]:
        arguments = request.parameters()
        for name, value in request.inputs().items():
            arguments[name] = await self._resolve_input(value, log)
        return arguments

    # -- one request --------------------------------------------------------------------

    async def run(self, request: BriaRequest) -> BackendResult:
        spec = endpoint_for(request)
        log = RetryLog()
        token = _current_log.set(log)
        started = time.perf_counter()
        try:
            fingerprint = request_fingerprint(request)
            handle, reattached = await self._attach_or_submit(request, fingerprint, log)
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    payload = await self._await_result(handle, log)
            except TimeoutError:
                await self._cancel(handle)
                self.journal.forget(fingerprint)
                raise FalServiceError(
                    f"{spec.endpoint_id} request {handle.request_id} did not finish within "
                    f"{self.request_timeout_s:.0f}s and was cancelled; raise request_timeout_s "
                    "or check fal's status page",
                    request_id=handle.request_id,
                ) from None
            except asyncio.CancelledError:
                await self._cancel(handle)
                self.journal.forget(fingerprint)
                raise
            except BriaError:
                self.journal.forget(fingerprint)
                raise
            response = spec.parse_response(payload)
            images = [await self._download(image, log) for image in response.images]
            self.journal.completed(fingerprint)
        finally:
            _current_log.reset(token)
        return BackendResult(
            endpoint_id=spec.endpoint_id,
            backend=self.name,
            request_id=handle.request_id,
            response=response,
            images=images,
            seed=getattr(response, "seed", None),
            cost_usd=spec.cost_usd(request),
            duration_s=time.perf_counter() - started,
            attempts=log.attempts,
            retries=list(log.reasons),
            reattached=reattached,
        )

    async def _attach_or_submit(
        self, request: BriaRequest, fingerprint: str, log: RetryLog
    ) -> tuple[fal_client.AsyncRequestHandle, bool]:
        entry = self.journal.get(fingerprint)
        if entry is not None:
            handle = await self._client.get_handle(entry.endpoint_id, entry.request_id)
            try:
                await with_retries("status", handle.status, self.retry, log, secrets=self._secrets)
            except FalRequestError as exc:
                if exc.status_code not in (404, 410):
                    raise
                logger.warning(
                    "journaled request %s is unknown to fal (HTTP %s); submitting again",
                    entry.request_id,
                    exc.status_code,
                )
                self.journal.forget(fingerprint)
            else:
                logger.info("re-attached to journaled request %s", entry.request_id)
                return handle, True
        arguments = await self._arguments(request, log)
        submit = asyncio.ensure_future(
            with_retries(
                "submit",
                lambda: self._client.submit(request.endpoint_id, arguments),
                self.retry,
                log,
                secrets=self._secrets,
            )
        )
        try:
            handle = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # Cancelled mid-submit: let the submit land, then cancel what fal accepted,
            # so no job runs (and bills) unobserved.
            try:
                accepted = await asyncio.wait_for(submit, timeout=30)
            except Exception:
                submit.cancel()
            else:
                await self._cancel(accepted)
            raise
        # Durable before we await anything else: a crash from here on re-attaches.
        self.journal.accepted(fingerprint, request.endpoint_id, handle.request_id)
        return handle, False

    async def _await_result(
        self, handle: fal_client.AsyncRequestHandle, log: RetryLog
    ) -> dict[str, Any]:
        delay = self.poll_interval_s
        while True:
            status = await with_retries(
                "status", handle.status, self.retry, log, secrets=self._secrets
            )
            if isinstance(status, Completed):
                if status.error:
                    error = redact(str(status.error), self._secrets)
                    raise FalServiceError(
                        f"fal request {handle.request_id} failed: "
                        f"{status.error_type or 'error'}: {error}",
                        request_id=handle.request_id,
                    )
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_interval_s)
        return await with_retries("result", handle.get, self.retry, log, secrets=self._secrets)

    async def _cancel(self, handle: fal_client.AsyncRequestHandle) -> None:
        try:
            await asyncio.shield(asyncio.wait_for(handle.cancel(), timeout=10))
        except Exception as exc:  # best effort: the request may already be done
            logger.warning(
                "could not cancel fal request %s: %s",
                handle.request_id,
                redact(str(exc), self._secrets),
            )

    # -- outputs ------------------------------------------------------------------------

    async def _fetch_file(self, url: str) -> bytes:
        async with self._http.stream("GET", url) as response:
            response.raise_for_status()
            declared = int(response.headers.get("content-length") or 0)
            if declared > self.max_output_bytes:
                raise OutputVerificationError(
                    f"result file {url} is {declared:,} bytes, over max_output_bytes "
                    f"({self.max_output_bytes:,})"
                )
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_output_bytes:
                    raise OutputVerificationError(
                        f"result file {url} exceeds max_output_bytes ({self.max_output_bytes:,})"
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    async def _download(self, image: Any, log: RetryLog) -> OutputImage:
        url: str = image.url
        if url.startswith("data:"):
            data, content_type = parse_data_uri(url)
        else:
            data = await with_retries(
                "download",
                lambda: self._fetch_file(url),
                self.retry,
                log,
                retry_not_found=True,  # CDN files can lag the result by a moment
                secrets=self._secrets,
            )
            content_type = image.content_type or sniff_content_type(data)
        return verify_output(data, content_type, image, max_pixels=self.max_pixels)


def verify_output(data: bytes, content_type: str, image: Any, *, max_pixels: int) -> OutputImage:
    """Check that a result file decodes and matches the size the response announced."""
    where = image.file_name or image.url[:80]
    if image.file_size is not None and image.file_size != len(data):
        raise OutputVerificationError(
            f"result file {where} is {len(data):,} bytes but the response said "
            f"{image.file_size:,}; the download was probably cut short: re-run"
        )
    try:
        decoded = decode_image(data, max_pixels=max_pixels, source=where)
    except ImageDecodeError as exc:
        raise OutputVerificationError(f"result file does not decode: {exc}") from None
    width, height = decoded.size
    if (image.width, image.height) != (None, None) and (image.width, image.height) != (
        width,
        height,
    ):
        raise OutputVerificationError(
            f"result file {where} is {width}x{height} but the response said "
            f"{image.width}x{image.height}"
        )
    return OutputImage(
        data=data,
        content_type=content_type,
        width=width,
        height=height,
        url=None if image.url.startswith("data:") else image.url,
    )


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
