"""BriaClient: Bria from a script, a notebook or any framework; no Dagster needed.

One client is one session: a backend (fal when a key is configured, else the embedded
engine), its HTTP connection pools and the request journals, on one private event
loop (:class:`~bria_dagster.client.session.BriaSession`), started on first use and
closed by :meth:`BriaClient.close` (or by leaving a ``with`` / ``async with`` block)::

    with BriaClient() as bria:
        cutout = bria.remove_background("shoe.jpg")

Single-image calls come in sync and async forms; batches run with bounded concurrency,
deduplication and a budget (:meth:`BriaClient.run_batch`). :attr:`BriaClient.usage`
counts calls, images and cost per endpoint. In Dagster,
:class:`~bria_dagster.orchestration.resource.BriaResource` builds one per execution.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Hashable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, Unpack

from ..errors import ConfigurationError
from .backends.base import Backend, BackendResult
from .contracts import build_request
from .contracts.base import BriaRequest, ImageInput
from .contracts.expand import AspectRatio, ExpandRequest
from .fetch_policy import FetchPolicy
from .noop import unchanged_expansion
from .prices import LIST_PRICES, PriceTable
from .retry import RetryPolicy
from .runner import BatchProgress, ItemOutcome, Usage, run_batch
from .session import BriaSession, SessionCall

__all__ = [
    "BatchOptions",
    "BriaClient",
    "ExpandArguments",
    "RemoveArguments",
    "ReplaceArguments",
    "selected_backend",
]

BackendChoice = Literal["auto", "fal", "local"]
SINGLE_CALL_JOURNAL = ".bria_journal.sqlite"
"""Where single-image calls journal their fal request ids unless ``journal_path`` says."""
OUTCOME_THREADS = 4
"""Outcomes of a batch handled at once (``on_outcome`` must be thread-safe)."""

Items = Iterable[tuple[Hashable, BriaRequest]] | AsyncIterable[tuple[Hashable, BriaRequest]]


class BatchOptions(TypedDict, total=False):
    """:meth:`BriaClient.run_batch`'s options."""

    total: int | None
    """How many items there are, for progress (``None``: unknown)."""
    on_progress: Callable[[BatchProgress], None] | None
    """Called with a :class:`BatchProgress` after every completed item."""
    journal: str | None
    """The batch's request journal (a path, ``sqlite:///``, ``postgresql://``)."""


class RemoveArguments(TypedDict, total=False):
    """:meth:`BriaClient.remove_background`'s options (omitted: fal's default)."""

    sync_mode: bool


class ReplaceArguments(TypedDict, total=False):
    """:meth:`BriaClient.replace_background`'s options (omitted: fal's default)."""

    prompt: str | None
    ref_image_url: ImageInput | None
    negative_prompt: str
    num_images: int
    seed: int | None
    refine_prompt: bool
    fast: bool
    sync_mode: bool


class ExpandArguments(TypedDict, total=False):
    """:meth:`BriaClient.expand_image`'s options (omitted: fal's default)."""

    aspect_ratio: AspectRatio | str | None
    canvas_size: Sequence[int] | None
    original_image_size: Sequence[int] | None
    original_image_location: Sequence[int] | None
    prompt: str
    negative_prompt: str
    seed: int | None
    sync_mode: bool


def selected_backend(backend: BackendChoice, fal_key: str | None) -> Literal["fal", "local"]:
    """What ``backend`` resolves to: ``auto`` is fal when a key is given (or in
    ``FAL_KEY``), else the local engine."""
    if backend == "auto":
        return "fal" if fal_key or os.environ.get("FAL_KEY") else "local"
    return backend


_PAIRS = ("canvas_size", "original_image_size", "original_image_location")


def _request_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Typed-method arguments as the request model takes them: ``None`` leaves fal's
    default; a size or a location given as any sequence becomes a list."""
    return {
        name: list(value) if name in _PAIRS else value
        for name, value in arguments.items()
        if value is not None
    }


class BriaClient:
    """Bria background remove / replace and image expand, on fal.ai or the embedded engine.

    Args:
        fal_key: the fal API key (default: ``FAL_KEY``). Never logged or recorded.
        backend: ``auto`` (fal when a key is set, else local), ``fal`` or ``local``.
        journal_path: request journal of single-image calls (a path, ``sqlite:///``,
            ``postgresql://``); batches name theirs.
        max_concurrency: requests at fal at once, across every call of this client; also
            the HTTP connections kept open.
        retry: attempts and backoff per network operation.
        request_timeout_s: per request, queue wait included; then it is cancelled.
        poll_interval_s, max_poll_interval_s: status polling (first delay, cap).
        budget_usd: cost cap per batch at ``prices`` (``None``: none).
        prices: USD per endpoint; costs, estimates and budgets use it.
        inline_max_bytes: local inputs up to this size go to fal as data URIs.
        on_terminate: what an interrupted call does with requests fal accepted
            (``cancel_queued`` or ``keep``; see
            :class:`~bria_dagster.client.backends.fal.FalBackend`).
        termination_grace_s: how long an interrupted call waits for that wind-down.
        max_unjournaled_submits: the most fal submits whose request id is not journaled
            yet, at any moment: what a SIGKILL can make the next run pay twice (see
            :class:`~bria_dagster.client.backends.fal.FalBackend`).
        max_pixels: decompression-bomb limit of every decoded image.
        fetch_policy: what input URLs and files the local engine (and the no-op check of
            an expansion) may read; default: public URLs, and files under the current
            folder.
        onnx_model_path, onnx_input_size: optional ONNX matting model for local remove.
    """

    def __init__(
        self,
        fal_key: str | None = None,
        *,
        backend: BackendChoice = "auto",
        journal_path: str | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        request_timeout_s: float = 900.0,
        poll_interval_s: float = 0.1,
        max_poll_interval_s: float = 1.0,
        budget_usd: float | None = None,
        prices: PriceTable = LIST_PRICES,
        inline_max_bytes: int = 2 * 1024 * 1024,
        on_terminate: Literal["cancel_queued", "keep"] = "cancel_queued",
        termination_grace_s: float = 20.0,
        max_unjournaled_submits: int = 4,
        max_pixels: int = 50_000_000,
        fetch_policy: FetchPolicy | None = None,
        onnx_model_path: str | None = None,
        onnx_input_size: int = 1024,
    ) -> None:
        self._key = fal_key or os.environ.get("FAL_KEY") or None
        self.backend_name = selected_backend(backend, self._key)
        if self.backend_name == "fal" and not self._key:
            raise ConfigurationError(
                "backend='fal' needs a key: set the FAL_KEY environment variable "
                "(or fal_key=EnvVar('FAL_KEY') on the resource)"
            )
        self.journal_path = journal_path or SINGLE_CALL_JOURNAL
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.budget_usd = budget_usd
        self.prices = prices
        self.inline_max_bytes = inline_max_bytes
        self.on_terminate = on_terminate
        self.termination_grace_s = termination_grace_s
        self.max_unjournaled_submits = max_unjournaled_submits
        self.max_pixels = max_pixels
        self.fetch_policy = fetch_policy or FetchPolicy(file_roots=(str(Path.cwd()),))
        self.onnx_model_path = onnx_model_path
        self.onnx_input_size = onnx_input_size
        self.usage = Usage()
        """Calls, images and cost per endpoint of everything this client ran."""
        self._usage_lock = threading.Lock()
        self._session: BriaSession | None = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:
        key = "set" if self._key else "none"
        return f"BriaClient(backend={self.backend_name!r}, key={key})"

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)  # closing waits for the session loop

    def make_backend(self) -> Backend:
        """A new backend (create it inside the event loop that will use it)."""
        if self.backend_name == "fal":
            from .backends.fal import FalBackend

            return FalBackend(  # journals are per call: the batch's, or journal_path
                self._key,
                retry=self.retry,
                request_timeout_s=self.request_timeout_s,
                poll_interval_s=self.poll_interval_s,
                max_poll_interval_s=self.max_poll_interval_s,
                inline_max_bytes=self.inline_max_bytes,
                max_pixels=self.max_pixels,
                # Each request in flight holds a connection for its status stream; a
                # quarter more (at least one) carry the submits, results and downloads.
                max_connections=self.max_concurrency + max(1, self.max_concurrency // 4),
                max_status_streams=self.max_concurrency,
                prices=self.prices,
                on_terminate=self.on_terminate,
                max_unjournaled_submits=self.max_unjournaled_submits,
            )
        from .backends.local import LocalBackend

        matte_model = None
        if self.onnx_model_path:
            from ..engine.onnx_matte import OnnxMatteModel

            size = (self.onnx_input_size, self.onnx_input_size)
            matte_model = OnnxMatteModel(self.onnx_model_path, input_size=size)
        return LocalBackend(  # outputs go to the caller; its own files are temporary
            fetch_policy=self.fetch_policy, max_pixels=self.max_pixels, matte_model=matte_model
        )

    def session(self) -> BriaSession:
        """The session (backend, HTTP pools, journals), started on first use and closed by
        :meth:`close` (also at interpreter exit, if nothing closed it before)."""
        with self._session_lock:
            if self._session is None:
                self._session = BriaSession(
                    self.make_backend,
                    max_concurrency=self.max_concurrency,
                    grace_s=self.termination_grace_s,
                )
                atexit.register(self.close)
            return self._session

    def close(self) -> None:
        """Close the session: the backend's connection pools and the journals. The client
        may be used again afterwards (a new session starts)."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            atexit.unregister(self.close)
            session.close()

    def _count(self, usage: Usage | BackendResult) -> None:
        with self._usage_lock:
            if isinstance(usage, Usage):
                self.usage.merge(usage)
            else:
                self.usage.add(usage)

    # -- batches --------------------------------------------------------------------------

    def open_journal(self, url: str, *, setting: str) -> None:
        """Open the request journal at ``url`` now, before any request is sent.

        Raises:
            ConfigurationError: it cannot be opened; the message names ``setting``.
        """
        self.session().journal(url, setting=setting)

    def run_batch(
        self,
        items: Items,
        on_outcome: Callable[[ItemOutcome], None],
        **options: Unpack[BatchOptions],
    ) -> Usage:
        """Run requests with bounded concurrency; ``on_outcome`` sees each as it completes
        (in a worker thread; several may run at once).

        ``items`` may be an async iterable that grows while the batch runs (a stream of
        steps, :class:`~bria_dagster.steps.chain.StepChain`); it is consumed on the session
        loop. ``journal``: the batch's request journal. Returns the batch's usage.
        """
        return self.start_batch(items, on_outcome, **options).result()

    def start_batch(
        self,
        items: Items,
        on_outcome: Callable[[ItemOutcome], None],
        *,
        total: int | None = None,
        on_progress: Callable[[BatchProgress], None] | None = None,
        journal: str | None = None,
    ) -> SessionCall[Usage]:
        """:meth:`run_batch` without waiting: the calling thread may do other work (write a
        finished step's table) while the batch runs; ``.result()`` waits for its usage."""
        session = self.session()
        usage = Usage()

        async def drive() -> None:
            outcomes: AsyncIterator[ItemOutcome] = run_batch(
                session.backend,
                items,
                max_concurrency=self.max_concurrency,
                budget_usd=self.budget_usd,
                prices=self.prices,
                total=total,
                on_progress=on_progress,
                journal=session.journal(journal),
                slots=session.slots,
            )
            # Storing outputs (hash, write, fsync) runs in worker threads, a few outcomes at
            # once: neither the polling loop nor the next outcome waits for one's fsync.
            handling: set[asyncio.Future[None]] = set()
            try:
                async for outcome in outcomes:
                    if outcome.result is not None and not outcome.shared:
                        usage.add(outcome.result)
                    handling.add(asyncio.ensure_future(asyncio.to_thread(on_outcome, outcome)))
                    if len(handling) >= OUTCOME_THREADS:
                        done, handling = await asyncio.wait(
                            handling, return_when=asyncio.FIRST_COMPLETED
                        )
                        for future in done:
                            future.result()  # an error in on_outcome ends the batch
            finally:
                if handling:
                    await asyncio.gather(*handling)
                self._count(usage)

        async def batch() -> Usage:
            await drive()
            return usage

        return session.start(batch())

    # -- single images ----------------------------------------------------------------------

    async def _send(self, request: BriaRequest) -> BackendResult:
        if isinstance(request, ExpandRequest):  # the fetch policy only when it may be used
            unchanged = await unchanged_expansion(request, self.fetch_policy)
            if unchanged is not None:  # it would come back as it is: answered, not paid for
                return unchanged
        session = self.session()
        paid = self.backend_name == "fal"  # the engine has nothing to re-attach to
        journal = session.journal(self.journal_path) if paid else None
        async with session.slots:
            return await session.backend.run(request, journal=journal)

    def call(self, endpoint: str, **arguments: Any) -> BackendResult:
        """Validate ``arguments`` for ``endpoint`` (id or short name), send, wait."""
        request = build_request(endpoint, **arguments)  # validated before anything is sent
        result = self.session().run(self._send(request))
        self._count(result)
        return result

    async def acall(self, endpoint: str, **arguments: Any) -> BackendResult:
        """:meth:`call`, awaitable from any event loop."""
        request = build_request(endpoint, **arguments)
        result = await self.session().arun(self._send(request))
        self._count(result)
        return result

    def remove_background(
        self, image_url: ImageInput, **options: Unpack[RemoveArguments]
    ) -> BackendResult:
        """Cut the subject out of ``image_url`` (URL, path or bytes): one RGBA PNG."""
        return self.call("remove", image_url=image_url, **_request_arguments(dict(options)))

    async def aremove_background(
        self, image_url: ImageInput, **options: Unpack[RemoveArguments]
    ) -> BackendResult:
        """:meth:`remove_background`, awaitable."""
        return await self.acall("remove", image_url=image_url, **_request_arguments(dict(options)))

    def replace_background(
        self, image_url: ImageInput, **options: Unpack[ReplaceArguments]
    ) -> BackendResult:
        """A new background from ``prompt`` or ``ref_image_url`` (exactly one); 1-4 images."""
        return self.call("replace", image_url=image_url, **_request_arguments(dict(options)))

    async def areplace_background(
        self, image_url: ImageInput, **options: Unpack[ReplaceArguments]
    ) -> BackendResult:
        """:meth:`replace_background`, awaitable."""
        return await self.acall("replace", image_url=image_url, **_request_arguments(dict(options)))

    def expand_image(
        self, image_url: ImageInput, **options: Unpack[ExpandArguments]
    ) -> BackendResult:
        """Grow the canvas to ``aspect_ratio`` (centred, wins) or ``canvas_size`` with the
        original's size and location; the new area is filled."""
        return self.call("expand", image_url=image_url, **_request_arguments(dict(options)))

    async def aexpand_image(
        self, image_url: ImageInput, **options: Unpack[ExpandArguments]
    ) -> BackendResult:
        """:meth:`expand_image`, awaitable."""
        return await self.acall("expand", image_url=image_url, **_request_arguments(dict(options)))
