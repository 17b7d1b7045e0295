"""FalBackend: Bria on fal.ai through ``fal_client.AsyncClient``'s queue API.

One request = submit -> journal the request id -> poll status -> fetch the
result -> download and verify every output file. Each network step is retried
per :class:`~bria_dagster.retry.RetryPolicy`; a timeout or task cancellation
cancels the fal request so nothing keeps running (and billing) unobserved.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fal_client
import httpx
from fal_client.client import AsyncBackupDomainTransport, Completed

from ..endpoints import LIST_PRICES, BriaRequest, PriceTable, endpoint_for, request_fingerprint
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
        max_connections: HTTPS connections kept open to fal (and as many to its file
            CDN); all of them stay alive between requests, so a long batch pays each
            TLS handshake once.
        prices: what a completed request costs (``BackendResult.cost_usd``).
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
        max_connections: int = 64,
        prices: PriceTable = LIST_PRICES,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._key = key
        self.prices = prices
        self._client = fal_client.AsyncClient(key=key)
        self.journal = journal or RequestJournal(None)
        self.retry = retry or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.inline_max_bytes = inline_max_bytes
        self.max_output_bytes = max_output_bytes
        self.max_pixels = max_pixels
        # Every connection stays open for reuse: a pool whose keep-alive limit is below
        # its connection limit closes the surplus after each burst and pays a new TLS
        # handshake for it on the next one.
        self.max_connections = max_connections
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0), transport=_ShardedPool(max_connections)
        )
        self._pooled: asyncio.Lock | None = None
        self._latency: collections.defaultdict[str, _LatencyModel] = collections.defaultdict(
            _LatencyModel
        )
        _install_retry_counter()

    def __repr__(self) -> str:
        return f"FalBackend(key={'set' if self._key else 'from env'}, journal={self.journal!r})"

    @property
    def _secrets(self) -> list[str]:
        return [self._key] if self._key else []

    async def aclose(self) -> None:
        await self._http.aclose()
        client = _cached_fal_http(self._client)
        if client is not None:
            await client.aclose()

    async def _ensure_pooled(self) -> None:
        """Once per backend: give fal-client's HTTP client a reusing connection pool."""
        if self._pooled is None:
            self._pooled = asyncio.Lock()
        if _cached_fal_http(self._client) is not None:
            return
        async with self._pooled:
            await _pool_fal_http(self._client, self.max_connections)

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

    async def run(
        self, request: BriaRequest, *, journal: RequestJournal | None = None
    ) -> BackendResult:
        """Run ``request`` on fal; ``journal`` (default: the backend's own) records its id."""
        journal = journal or self.journal
        spec = endpoint_for(request)
        log = RetryLog()
        token = _current_log.set(log)
        started = time.perf_counter()
        try:
            await self._ensure_pooled()
            fingerprint = request_fingerprint(request)
            handle, reattached = await self._attach_or_submit(request, fingerprint, log, journal)
            accepted = None if reattached else time.monotonic()
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    payload = await self._await_result(handle, log, request.endpoint_id, accepted)
            except TimeoutError:
                await self._cancel(handle)
                journal.forget(fingerprint)
                raise FalServiceError(
                    f"{spec.endpoint_id} request {handle.request_id} did not finish within "
                    f"{self.request_timeout_s:.0f}s and was cancelled; raise request_timeout_s "
                    "or check fal's status page",
                    request_id=handle.request_id,
                ) from None
            except asyncio.CancelledError:
                await self._cancel(handle)
                journal.forget(fingerprint)
                raise
            except BriaError:
                journal.forget(fingerprint)
                raise
            response = spec.parse_response(payload)
            images = [await self._download(image, log) for image in response.images]
            journal.completed(fingerprint)
        finally:
            _current_log.reset(token)
        return BackendResult(
            endpoint_id=spec.endpoint_id,
            backend=self.name,
            request_id=handle.request_id,
            response=response,
            images=images,
            seed=getattr(response, "seed", None),
            cost_usd=self.prices.cost_usd(request),
            duration_s=time.perf_counter() - started,
            attempts=log.attempts,
            retries=list(log.reasons),
            reattached=reattached,
        )

    async def _attach_or_submit(
        self, request: BriaRequest, fingerprint: str, log: RetryLog, journal: RequestJournal
    ) -> tuple[fal_client.AsyncRequestHandle, bool]:
        entry = journal.get(fingerprint)
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
                journal.forget(fingerprint)
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
        journal.accepted(fingerprint, request.endpoint_id, handle.request_id)
        return handle, False

    async def _await_result(
        self,
        handle: fal_client.AsyncRequestHandle,
        log: RetryLog,
        endpoint_id: str,
        accepted: float | None,
    ) -> dict[str, Any]:
        """Poll until COMPLETED, then fetch the result (one status call less than
        ``handle.get()``, which polls status again before fetching).

        Polls aim at the time this endpoint's requests typically took to complete
        (learned from earlier ones, queue wait included), so most requests need a single
        status call; between aims, polls are short. A wait is never longer than
        ``4 x max_poll_interval_s``, so an estimate from a busier moment costs little.
        Until there is anything to learn from, and for re-attached requests, polling
        backs off from ``poll_interval_s`` to ``max_poll_interval_s`` as before.
        """
        expected = self._latency[endpoint_id].mean if accepted is not None else None
        longest = 4 * self.max_poll_interval_s
        delay = self.poll_interval_s
        if expected is not None:
            delay = min(max(delay, 0.05 * expected), self.max_poll_interval_s)

        def next_wait() -> float:
            if expected is None or accepted is None:
                return delay
            aim = 0.85 * expected - (time.monotonic() - accepted)
            return max(delay, min(aim, longest))

        await asyncio.sleep(next_wait())
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
            await asyncio.sleep(next_wait())
            delay = min(delay * 1.5, self.max_poll_interval_s)
        if accepted is not None:
            self._latency[endpoint_id].observe(time.monotonic() - accepted)
        return await with_retries(
            "result", lambda: _fetch_result(handle), self.retry, log, secrets=self._secrets
        )

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


class _LatencyModel:
    """How long requests took from acceptance to COMPLETED (an EWMA; queue wait included)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.mean: float | None = None

    def observe(self, seconds: float) -> None:
        self.mean = (
            seconds if self.mean is None else self.mean + self.weight * (seconds - self.mean)
        )


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Any) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            await self._stream.aclose()
        finally:
            if release is not None:
                release()


class _ShardedPool(httpx.AsyncBaseTransport):
    """Connections spread over several small pools, each request to the least busy one.

    httpcore's pool re-examines every connection it holds (keep-alive expiry, a socket
    readability check, and a quadratic idle count) whenever a request starts or ends,
    so one pool of N connections costs O(N^2) work per request. Several pools of a few
    connections each keep every connection alive at a fraction of that cost.
    """

    def __init__(self, max_connections: int, per_shard: int = 4, **transport: Any) -> None:
        shards = max(1, -(-max_connections // per_shard))
        size = max(1, min(per_shard, max_connections))
        limits = httpx.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
        )
        self._shards = [httpx.AsyncHTTPTransport(limits=limits, **transport) for _ in range(shards)]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1

        def release() -> None:
            busy[index] -= 1

        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        if not isinstance(response.stream, httpx.AsyncByteStream):  # pragma: no cover
            release()
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


# --- fal-client internals: the only place this module touches them ------------------------
#
# fal_client.AsyncClient builds its httpx client lazily in the cached async property
# ``_client`` (an asyncstdlib cached_property that stores an awaitable in the instance
# ``__dict__``), around an ``AsyncBackupDomainTransport`` whose inner httpx client has
# httpx's default limits: 100 connections but only 20 kept alive. At 64 requests in
# flight every burst opens connections that are then closed, and the next burst pays a
# TLS handshake for each again (~400 handshakes for 640 jobs, the client's main CPU cost).
# There is no public hook for the limits, so we let fal-client build its client (auth and
# headers stay fal-client's own), then replace the cached value with an equivalent client
# whose backup-domain transport wraps a pool that keeps every connection alive. When the
# attribute layout is not what we expect (another fal-client version), we keep fal-client's
# own client: correct, only slower.


_RESULT_TIMEOUT = httpx.Timeout(120.0, connect=30.0)  # fal-client's QUEUE_POLL_TIMEOUT


async def _fetch_result(handle: fal_client.AsyncRequestHandle) -> dict[str, Any]:
    """GET a COMPLETED request's result: ``handle.get()`` without its extra status call.

    It uses fal-client's own retrying request helper, so transient failures are retried
    (and logged, and counted) exactly as in ``handle.get()``, and errors are raised as
    fal-client raises them (:class:`FalClientHTTPError` with fal's ``detail``). A
    fal-client without that helper gets ``handle.get()`` itself.
    """
    request = getattr(fal_client.client, "_async_maybe_retry_request", None)
    if request is None:  # pragma: no cover - another fal-client layout
        return await handle.get()
    response = await request(handle.client, "GET", handle.response_url, timeout=_RESULT_TIMEOUT)
    return response.json()


class _Ready:
    """An awaitable that yields ``value`` (what the cached property expects to find)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # pragma: no cover


def _cached_fal_http(client: fal_client.AsyncClient) -> httpx.AsyncClient | None:
    """fal-client's httpx client once it exists, else None (never creates it)."""
    cached = client.__dict__.get("_client")
    value = getattr(cached, "value", None)
    return value if isinstance(value, httpx.AsyncClient) else None


async def _pool_fal_http(client: fal_client.AsyncClient, max_connections: int) -> None:
    if _cached_fal_http(client) is not None:
        return
    try:
        original = await client._client
    except AttributeError:  # pragma: no cover - a fal-client without the cached property
        return
    if _cached_fal_http(client) is not original:  # pragma: no cover - another layout
        logger.debug("fal-client caches its HTTP client differently; keeping its own pool")
        return
    pooled = httpx.AsyncClient(
        transport=AsyncBackupDomainTransport(transport=_ShardedPool(max_connections)),
        headers=original.headers,
        timeout=original.timeout,
    )
    client.__dict__["_client"] = _Ready(pooled)
    await original.aclose()  # never used: nothing was sent through it


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
