"""FalBackend: Bria on fal.ai through fal's queue protocol, with one retry layer.

One request = submit -> journal the request id -> follow fal's status stream until
COMPLETED (polling the status where the server has no stream, or it broke) -> fetch
the result -> download and verify every output file: four HTTP requests in all. Each
network operation is retried per :class:`~bria_dagster.client.retry.RetryPolicy`; a
timeout or task cancellation cancels the fal request so nothing keeps running (and
billing) unobserved.

The protocol calls (and why they are ours, not fal-client's) are
:class:`~bria_dagster.client.backends.fal_queue.FalQueueClient`'s; this module is what a
Bria request needs around them: inputs, the journal, polling, outputs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ...errors import (
    BriaError,
    FalRequestError,
    FalServiceError,
    ImageDecodeError,
    OutputVerificationError,
    RequestValidationError,
    redact,
)
from ..contracts import endpoint_for
from ..contracts.base import BriaRequest
from ..fingerprint import request_fingerprint
from ..images import decode_image, parse_data_uri, sniff_content_type, to_data_uri
from ..journal import RequestJournal
from ..prices import LIST_PRICES, PriceTable
from ..retry import RetryLog, RetryPolicy
from .base import BackendResult, OutputImage
from .fal_queue import FalQueueClient, Queued

__all__ = ["FalBackend"]

logger = logging.getLogger("bria_dagster.fal")


class FalBackend:
    """Runs validated Bria requests on fal.ai.

    Args:
        key: the fal key; ``None`` lets fal-client find credentials (``FAL_KEY``...).
        journal: where accepted request ids are recorded before they are awaited,
            unless :meth:`run` is given one.
        retry: retry policy for submit, status, result, cancel, upload and downloads;
            ``max_attempts`` is the number of HTTP attempts per operation, all told.
        request_timeout_s: overall limit per request, queue wait included; on
            expiry the fal request is cancelled.
        inline_max_bytes: local inputs up to this size go as data URIs; larger
            ones through fal storage upload.
        max_output_bytes: refuse result files larger than this.
        max_connections: the most HTTPS connections open at once, to fal and its file
            CDN together (a quarter more than the requests run at once: each request
            awaited holds one for its status stream); all of them stay alive between
            requests, so a long batch pays each TLS handshake once.
        max_status_streams: the most status streams open at once (each holds one of
            those connections for its whole wait; a request beyond it polls its status);
            by default all but a fifth of ``max_connections``, which stay free for
            submits, results and downloads.
        prices: what a completed request costs (``BackendResult.cost_usd``).
        on_terminate: what happens to a request fal accepted when its task is cancelled
            (a run terminated, a batch ended early): ``"cancel_queued"`` asks fal to cancel
            it (fal does not bill a request cancelled while still queued; the journal entry
            is dropped once fal confirms the cancellation, else kept for re-attach: a
            running job is billed anyway, so the next run collects its result);
            ``"keep"`` leaves it running and journaled, for the next run to re-attach to.
            Either way a submit in flight is first allowed to land and be journaled.
        max_unjournaled_submits: the most submits whose request id is not journaled yet,
            at any moment: a submit holds one of these slots from the moment its POST
            leaves until fal's answer is committed to the journal. A process killed
            (SIGKILL, OOM) in that window cannot learn those ids, and fal's queue has no
            idempotency key, so the next run pays for them again; this bounds that loss
            per backend. Status polls, result fetches and downloads are not bounded by it
            (``max_concurrency`` bounds them); a burst of submits goes out this many at a
            time, each taking a submit round trip plus the journal commit.
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
        max_status_streams: int | None = None,
        prices: PriceTable = LIST_PRICES,
        on_terminate: Literal["cancel_queued", "keep"] = "cancel_queued",
        max_unjournaled_submits: int = 4,
    ) -> None:
        self._key = key
        self.prices = prices
        self.journal = journal or RequestJournal(None)
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.inline_max_bytes = inline_max_bytes
        self.max_pixels = max_pixels
        if on_terminate not in ("cancel_queued", "keep"):
            raise ValueError(f"on_terminate must be cancel_queued or keep, not {on_terminate!r}")
        self.on_terminate = on_terminate
        if max_unjournaled_submits < 1:
            raise ValueError(f"max_unjournaled_submits must be >= 1, got {max_unjournaled_submits}")
        self.max_unjournaled_submits = max_unjournaled_submits
        self._unjournaled = asyncio.Semaphore(max_unjournaled_submits)
        # The one HTTP client: queue calls, uploads and downloads.
        self._queue = FalQueueClient(
            key,
            retry=retry or RetryPolicy(),
            max_connections=max_connections,
            max_output_bytes=max_output_bytes,
            max_status_streams=max_status_streams,
        )
        self._latency: collections.defaultdict[str, _LatencyModel] = collections.defaultdict(
            _LatencyModel
        )
        self._latency_any = _LatencyModel()  # every endpoint's: the prior of a new one

    def __repr__(self) -> str:
        return f"FalBackend(key={'set' if self._key else 'from env'}, journal={self.journal!r})"

    async def aclose(self) -> None:
        await self._queue.aclose()

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
        return await self._queue.upload(data, content_type, log)

    async def _arguments(self, request: BriaRequest, log: RetryLog) -> dict[str, Any]:
        arguments = request.parameters()
        for name, value in request.inputs().items():
            arguments[name] = await self._resolve_input(value, log)
        return arguments

    # -- one request --------------------------------------------------------------------

    async def run(
        self,
        request: BriaRequest,
        *,
        journal: RequestJournal | None = None,
        on_service_done: Callable[[], None] | None = None,
    ) -> BackendResult:
        """Run one request; ``journal`` (else the backend's own) records its fal id.

        ``on_service_done`` is called when fal reports the request finished, before its
        result is fetched and its images downloaded."""
        journal = journal if journal is not None else self.journal
        spec = endpoint_for(request)
        log = RetryLog()
        started = time.perf_counter()
        fingerprint = request_fingerprint(request)
        queued, known = await self._attach_or_submit(request, fingerprint, journal, log)
        reattached = known is not None
        accepted = None if reattached else time.monotonic()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                payload = await self._await_result(
                    queued, log, request.endpoint_id, accepted, on_service_done, known
                )
        except TimeoutError:
            await self._queue.cancel(queued)
            journal.forget(fingerprint)
            raise FalServiceError(
                f"{spec.endpoint_id} request {queued.request_id} did not finish within "
                f"{self.request_timeout_s:.0f}s and was cancelled; raise request_timeout_s "
                "or check fal's status page",
                request_id=queued.request_id,
            ) from None
        except asyncio.CancelledError:
            await self._wind_down(queued, fingerprint, journal)
            raise
        except BriaError:
            journal.forget(fingerprint)
            raise
        response = spec.parse_response(payload)
        images = [await self._download(image, log) for image in response.output_images()]
        await asyncio.to_thread(journal.completed, fingerprint)
        return BackendResult(
            endpoint_id=spec.endpoint_id,
            backend=self.name,
            request_id=queued.request_id,
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
        self, request: BriaRequest, fingerprint: str, journal: RequestJournal, log: RetryLog
    ) -> tuple[Queued, dict[str, Any] | None]:
        """The request fal works on: a journaled one re-attached to (with the status it
        was found in), else a new submit (status None)."""
        entry = journal.get(fingerprint)
        if entry is not None:
            known = self._queue.known(entry.endpoint_id, entry.request_id)
            try:
                status = await self._queue.status(known, log)
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
                if _was_cancelled(status):
                    logger.info(
                        "journaled request %s was cancelled before it ran; submitting again",
                        entry.request_id,
                    )
                    journal.forget(fingerprint)
                else:
                    logger.info("re-attached to journaled request %s", entry.request_id)
                    return known, status
        arguments = await self._arguments(request, log)
        # The submit and its journal write run as one task that a cancellation of this one
        # does not interrupt: an accepted id is always journaled, and nothing else (no
        # other step of this request) comes between fal's answer and the journal write.
        # That task holds a max_unjournaled_submits slot from before its POST until its
        # journal commit; a cancellation while waiting for a slot sends nothing.
        await self._unjournaled.acquire()
        submit = asyncio.ensure_future(
            self._submit_and_journal(request.endpoint_id, arguments, fingerprint, journal, log)
        )
        submit.add_done_callback(lambda _: self._unjournaled.release())
        try:
            queued = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # Cancelled mid-submit (a run terminated): let the submit land and be journaled,
            # then treat what fal accepted as any accepted request (cancel if queued, or keep).
            try:
                accepted = await asyncio.wait_for(asyncio.shield(submit), timeout=30)
            except Exception:
                submit.cancel()
            else:
                await self._wind_down(accepted, fingerprint, journal)
            raise
        return queued, None

    async def _submit_and_journal(
        self,
        endpoint_id: str,
        arguments: dict[str, Any],
        fingerprint: str,
        journal: RequestJournal,
        log: RetryLog,
    ) -> Queued:
        queued = await self._queue.submit(endpoint_id, arguments, log)
        # Durable before we await anything else: a crash from here on re-attaches. The
        # commit runs in the journal's own writer thread (not behind the outputs being
        # stored in the shared worker threads), so the other requests' polls go on.
        await journal.accepted_async(fingerprint, endpoint_id, queued.request_id)
        return queued

    async def _wind_down(self, queued: Queued, fingerprint: str, journal: RequestJournal) -> None:
        """A request fal accepted whose task is being cancelled (``on_terminate``)."""
        if self.on_terminate == "keep":
            logger.info("kept fal request %s for the next run to re-attach", queued.request_id)
            return
        await self._queue.cancel(queued)
        try:
            status = await asyncio.wait_for(self._queue.status(queued, RetryLog()), timeout=10)
        except Exception:
            return  # unknown: keep the entry, the next run re-attaches and sees
        if status.get("status") == "COMPLETED" and status.get("error"):
            journal.forget(fingerprint)  # cancelled while queued: never billed
        else:
            logger.info(
                "fal request %s was already running (billed); journaled for re-attach",
                queued.request_id,
            )

    async def _await_result(
        self,
        queued: Queued,
        log: RetryLog,
        endpoint_id: str,
        accepted: float | None,
        on_service_done: Callable[[], None] | None = None,
        known: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for COMPLETED on fal's status stream (polls where there is none, or it
        broke), then fetch the result. A ``known`` COMPLETED status (a re-attached
        request found finished) needs no wait."""
        status = known if known is not None and known.get("status") == "COMPLETED" else None
        if status is None:
            status = await self._queue.watch(queued, log)
        if status is None:
            status = await self._poll(queued, log, endpoint_id, accepted)
        if status.get("error"):
            error = redact(str(status["error"]), self._queue.secrets)
            raise FalServiceError(
                f"fal request {queued.request_id} failed: "
                f"{status.get('error_type') or 'error'}: {error}",
                request_id=queued.request_id,
            )
        if on_service_done is not None:
            on_service_done()
        if accepted is not None:
            took = time.monotonic() - accepted
            self._latency[endpoint_id].observe(took)
            self._latency_any.observe(took)
        return await self._queue.result(queued, log)

    async def _poll(
        self, queued: Queued, log: RetryLog, endpoint_id: str, accepted: float | None
    ) -> dict[str, Any]:
        """Poll the status until COMPLETED; that status.

        Polls aim at the time this endpoint's requests typically took to complete
        (learned from earlier ones, queue wait included), so most requests need a single
        status call; between aims, polls are short. An endpoint not seen yet starts from
        what any endpoint took (in a streaming run, a product's first replace follows its
        remove, so remove's times are known by then). A wait is never longer than
        ``4 x max_poll_interval_s``, so an estimate from a busier moment costs little.
        Until there is anything to learn from, and for re-attached requests, polls come
        every ``poll_interval_s`` for :data:`STEADY_POLL_S`, then back off to
        ``max_poll_interval_s``.
        """
        longest = 4 * self.max_poll_interval_s
        delay = self.poll_interval_s

        def next_wait() -> float:
            if accepted is None:
                return delay
            # Read at every poll: the first wave of a run learns from its first finisher.
            expected = self._latency[endpoint_id].mean or self._latency_any.mean
            if expected is None:
                return delay
            step = min(max(delay, 0.05 * expected), self.max_poll_interval_s)
            aim = 0.85 * expected - (time.monotonic() - accepted)
            return max(step, min(aim, longest))

        await asyncio.sleep(next_wait())
        steady_until = time.monotonic() + STEADY_POLL_S
        while True:
            status = await self._queue.status(queued, log)
            state = status.get("status")
            if state == "COMPLETED":
                return status
            if state not in ("IN_QUEUE", "IN_PROGRESS"):
                raise FalServiceError(
                    f"fal request {queued.request_id} has an unknown status {state!r}",
                    request_id=queued.request_id,
                )
            await asyncio.sleep(next_wait())
            if time.monotonic() > steady_until:  # a long job: poll less and less often
                delay = min(delay * 1.5, self.max_poll_interval_s)

    # -- outputs ------------------------------------------------------------------------

    async def _download(self, image: Any, log: RetryLog) -> OutputImage:
        url: str = image.url
        if url.startswith("data:"):
            data, content_type = parse_data_uri(url)
        else:
            data = await self._queue.download(url, log)
            content_type = image.content_type or sniff_content_type(data)
        return verify_output(data, content_type, image, max_pixels=self.max_pixels)


def _was_cancelled(status: dict[str, Any]) -> bool:
    """A status of a request that ended cancelled (never run, never billed)."""
    return (
        status.get("status") == "COMPLETED"
        and "cancel" in str(status.get("error_type") or "").lower()
    )


STEADY_POLL_S = 2.0
"""For this long after its first status call a request is polled every ``delay`` (at most
``poll_interval_s`` while nothing is known yet), then the delay grows 1.5x per poll up to
``max_poll_interval_s``: a short job is not left waiting behind a long back-off step."""


class _LatencyModel:
    """How long requests took from acceptance to COMPLETED (an EWMA; queue wait included)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.mean: float | None = None

    def observe(self, seconds: float) -> None:
        self.mean = (
            seconds if self.mean is None else self.mean + self.weight * (seconds - self.mean)
        )


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
