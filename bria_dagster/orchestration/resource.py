"""BriaResource: how to call Bria (key, backend, concurrency, retries, budget, fetch policy).

A thin ``ConfigurableResource`` in the style of dagster-openai: the backend, its HTTP
connection pools and the request journals are built once per execution in
``setup_for_execution`` and closed in ``teardown_after_execution``. Single-image
methods come in sync and async forms with typed parameters; the calling asset's
usage (calls, images, cost per endpoint) lands in its output metadata. One instance
under the key ``bria`` serves any number of pipelines; where a pipeline's outputs go
is the pipeline's business, not the resource's.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr, create_model

from ..client.backends.base import Backend, BackendResult
from ..client.backends.fal import FalBackend
from ..client.backends.local import LocalBackend
from ..client.contracts import build_request
from ..client.contracts.base import BriaRequest, ImageInput
from ..client.contracts.expand import AspectRatio, ExpandRequest
from ..client.fetch import FetchPolicy
from ..client.noop import unchanged_expansion
from ..client.prices import PriceTable
from ..client.retry import RetryPolicy
from ..client.runner import BatchProgress, ItemOutcome, Usage, run_batch
from ..client.session import BriaSession, SessionCall
from ..errors import ConfigurationError
from ..records.schema import NOOP_BACKEND

__all__ = ["BriaResource", "PriceSettings"]

AnyContext = dg.OpExecutionContext | dg.AssetExecutionContext
SINGLE_CALL_JOURNAL = ".bria_journal.sqlite"
OUTCOME_THREADS = 4
"""Outcomes of a batch handled at once (``on_outcome`` must be thread-safe)."""
"""Where single-image calls journal their fal request ids unless ``journal_path`` says."""

PriceSettings = create_model(
    "PriceSettings",
    __base__=dg.Config,
    __doc__="The price table (:class:`~bria_dagster.client.prices.PriceTable`) as resource "
    "configuration: set your contract's prices, their source and date.",
    **{name: (spec.annotation, spec) for name, spec in PriceTable.model_fields.items()},
)


class BriaResource(dg.ConfigurableResource):
    """Bria background remove / replace and image expand, on fal.ai or the embedded engine.

    ``BriaResource(fal_key=dg.EnvVar("FAL_KEY"))`` calls fal when the key is set;
    ``BriaResource(backend="local")`` always uses the embedded engine.
    """

    fal_key: str | None = Field(
        default=None,
        description="fal API key; use EnvVar('FAL_KEY'). Never logged or recorded.",
    )
    backend: Literal["auto", "fal", "local"] = Field(
        default="auto", description="auto = fal when a key is set, else the local engine."
    )
    journal_path: str | None = Field(
        default=None,
        description="Request journal for single-image calls (pipelines keep theirs with their "
        "storage): a file path, sqlite:///path or postgresql://... "
        "Default ./.bria_journal.sqlite.",
    )
    max_concurrency: int = Field(
        default=16,
        ge=1,
        le=512,
        description="Requests at fal (queued or running) at once per execution; a finished "
        "request's download does not hold a slot. Also the HTTP connections kept open.",
    )
    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per network step.")
    retry_base_delay_s: float = Field(default=0.5, gt=0, description="First retry backoff.")
    retry_max_delay_s: float = Field(default=30.0, gt=0, description="Backoff cap.")
    request_timeout_s: float = Field(
        default=900.0, gt=0, description="Per request, queue wait included; then cancelled."
    )
    poll_interval_s: float = Field(default=0.1, gt=0, description="Status poll delay (first 2 s).")
    max_poll_interval_s: float = Field(default=1.0, gt=0, description="Status poll delay cap.")
    budget_usd: float | None = Field(
        default=None, ge=0, description="Cost cap per materialization at `prices` (None: none)."
    )
    prices: PriceSettings = Field(  # type: ignore[valid-type]
        default_factory=PriceSettings,
        description="USD prices per endpoint (list prices by default, with source and date); "
        "costs, estimates, budgets and each record's unit_price_usd use them.",
    )
    inline_max_bytes: int = Field(
        default=2 * 1024 * 1024, description="Local inputs up to this size go as data URIs."
    )
    on_terminate: Literal["cancel_queued", "keep"] = Field(
        default="cancel_queued",
        description="When a run is terminated (UI Terminate, SIGINT/SIGTERM): submits in "
        "flight always land in the journal first; then 'cancel_queued' cancels accepted "
        "requests still waiting in fal's queue (fal does not bill those; running ones are "
        "kept for re-attach), 'keep' leaves every accepted request for the next run to "
        "re-attach to.",
    )
    termination_grace_s: float = Field(
        default=20.0,
        gt=0,
        description="How long a terminated step waits for its requests to wind down "
        "(keep it under the pod's terminationGracePeriodSeconds, 30 by default).",
    )
    max_pixels: int = Field(default=50_000_000, description="Decompression-bomb limit.")
    allow_private_networks: bool = Field(
        default=False, description="Let input URLs reach loopback/private addresses."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts allowed even when private/loopback."
    )
    file_roots: list[str] = Field(
        default_factory=lambda: ["."],
        description="Folders local input files may come from (file:// and paths).",
    )
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, description="Input size limit.")
    fetch_timeout_s: float = Field(default=30.0, gt=0, description="Input fetch time limit.")
    onnx_model_path: str | None = Field(
        default=None,
        description="Optional ONNX matting model for local remove (needs bria-dagster[onnx]).",
    )
    onnx_input_size: int = Field(default=1024, description="Square input size of that model.")

    _session: BriaSession | None = PrivateAttr(default=None)
    _session_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _usage_by_step: dict[str, Usage] = PrivateAttr(default_factory=dict)

    # -- configuration ------------------------------------------------------------------

    def selected_backend(self) -> Literal["fal", "local"]:
        """The backend ``auto`` resolves to: fal when a key is configured, else local."""
        if self.backend == "auto":
            return "fal" if self._key() else "local"
        return self.backend

    def _key(self) -> str | None:
        return self.fal_key or os.environ.get("FAL_KEY") or None

    def price_table(self) -> PriceTable:
        """The prices costs, estimates and budgets are computed from."""
        return PriceTable(**self.prices.model_dump())

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay_s=self.retry_base_delay_s,
            max_delay_s=self.retry_max_delay_s,
        )

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            allow_private_networks=self.allow_private_networks,
            allowed_hosts=tuple(self.allowed_hosts),
            file_roots=tuple(str(Path(r).resolve()) for r in self.file_roots),
            max_bytes=self.fetch_max_bytes,
            timeout_s=self.fetch_timeout_s,
        )

    def make_backend(self) -> Backend:
        """A new backend (create it inside the event loop that will use it)."""
        if self.selected_backend() == "fal":
            key = self._key()
            if not key:
                raise ConfigurationError(
                    "BriaResource(backend='fal') needs a key: set the FAL_KEY environment "
                    "variable (or fal_key=EnvVar('FAL_KEY'))"
                )
            return FalBackend(  # journals are per call: the pipeline's, or journal_path
                key,
                retry=self.retry_policy(),
                request_timeout_s=self.request_timeout_s,
                poll_interval_s=self.poll_interval_s,
                max_poll_interval_s=self.max_poll_interval_s,
                inline_max_bytes=self.inline_max_bytes,
                max_pixels=self.max_pixels,
                max_connections=self.max_concurrency,
                prices=self.price_table(),
                on_terminate=self.on_terminate,
            )
        matte_model = None
        if self.onnx_model_path:
            from ..engine.onnx_matte import OnnxMatteModel

            size = (self.onnx_input_size, self.onnx_input_size)
            matte_model = OnnxMatteModel(self.onnx_model_path, input_size=size)
        return LocalBackend(  # outputs go to the ImageStore; its own files are temporary
            fetch_policy=self.fetch_policy(),
            max_pixels=self.max_pixels,
            matte_model=matte_model,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.session()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def session(self) -> BriaSession:
        """This execution's session (backend, HTTP pools, journals), started on first use.

        Inside Dagster it is started in ``setup_for_execution`` and closed in
        ``teardown_after_execution``; used directly, call :meth:`close` when done (it is
        also closed at interpreter exit).
        """
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
        """Close the session: the backend's connection pools and the journals."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            atexit.unregister(self.close)
            session.close()

    # -- batch (what the pipeline's assets use) -----------------------------------------

    def open_journal(self, url: str, *, setting: str) -> None:
        """Open this execution's request journal at ``url`` now, before any request is sent.

        Raises:
            dagster.Failure: it cannot be opened (Postgres unreachable): the message names
                ``setting`` and the server's host:port; metadata carries both.
        """
        try:
            self.session().journal(url, setting=setting)
        except ConfigurationError as exc:
            raise dg.Failure(
                description=exc.message,
                metadata={"journal_setting": setting, "error": type(exc).__name__},
            ) from None

    def run_batch(
        self,
        items: Iterable[tuple[Hashable, BriaRequest]] | AsyncIterable[tuple[Hashable, BriaRequest]],
        on_outcome: Callable[[ItemOutcome], None],
        *,
        total: int | None = None,
        on_progress: Callable[[BatchProgress], None] | None = None,
        journal: str | None = None,
    ) -> Usage:
        """Run requests with bounded concurrency; ``on_outcome`` sees each as it completes
        (in a worker thread; several may run at once).

        ``items`` may be an async iterable that grows while the batch runs (a stream of
        steps, :class:`~bria_dagster.steps.chain.StepChain`); it is consumed on the session loop.

        ``journal``: the pipeline's request journal file. Returns the batch's usage.
        """
        return self.start_batch(
            items, on_outcome, total=total, on_progress=on_progress, journal=journal
        ).result()

    def start_batch(
        self,
        items: Iterable[tuple[Hashable, BriaRequest]] | AsyncIterable[tuple[Hashable, BriaRequest]],
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
                prices=self.price_table(),
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

        async def batch() -> Usage:
            await drive()
            return usage

        return session.start(batch())

    # -- single images (any op or asset) ------------------------------------------------

    async def _call(self, request: BriaRequest) -> BackendResult:
        if isinstance(request, ExpandRequest):  # the fetch policy only when it may be used
            unchanged = await unchanged_expansion(request, self.fetch_policy())
            if unchanged is not None:  # it would come back as it is: answered, not paid for
                return unchanged
        session = self.session()
        paid = self.selected_backend() == "fal"  # the engine has nothing to re-attach to
        journal = session.journal(self.journal_path or SINGLE_CALL_JOURNAL) if paid else None
        async with session.slots:
            return await session.backend.run(request, journal=journal)

    def _record(self, context: AnyContext | None, result: BackendResult) -> BackendResult:
        if context is not None:
            # The calling op's or asset's own usage: one resource instance serves every
            # step of an in-process run, so a resource-wide total would mix in other steps.
            op = getattr(context, "op_execution_context", context)  # an asset's context
            step = f"{op.run.run_id}/{op.op_handle}"
            usage = self._usage_by_step.setdefault(step, Usage())
            if result.backend != NOOP_BACKEND:  # no call was made: nothing to count
                usage.add(result)
            context.add_output_metadata(usage.metadata())
        return result

    def _run(self, context: AnyContext | None, endpoint: str, **arguments: Any) -> BackendResult:
        request = build_request(endpoint, **arguments)  # validated before anything is sent
        return self._record(context, self.session().run(self._call(request)))

    async def _arun(
        self, context: AnyContext | None, endpoint: str, **arguments: Any
    ) -> BackendResult:
        request = build_request(endpoint, **arguments)
        return self._record(context, await self.session().arun(self._call(request)))

    def remove_background(
        self, image_url: ImageInput, *, sync_mode: bool = False, context: AnyContext | None = None
    ) -> BackendResult:
        """Cut the subject out of ``image_url`` (URL, path or bytes): one RGBA PNG."""
        return self._run(context, "remove", image_url=image_url, sync_mode=sync_mode)

    async def aremove_background(
        self, image_url: ImageInput, *, sync_mode: bool = False, context: AnyContext | None = None
    ) -> BackendResult:
        """:meth:`remove_background`, awaitable from an ``async def`` asset."""
        return await self._arun(context, "remove", image_url=image_url, sync_mode=sync_mode)

    def replace_background(
        self,
        image_url: ImageInput,
        *,
        prompt: str | None = None,
        ref_image_url: ImageInput | None = None,
        negative_prompt: str = "",
        num_images: int = 1,
        seed: int | None = None,
        refine_prompt: bool = True,
        fast: bool = True,
        sync_mode: bool = False,
        context: AnyContext | None = None,
    ) -> BackendResult:
        """A new background from ``prompt`` or ``ref_image_url`` (exactly one); 1-4 images."""
        return self._run(context, "replace", **_replace_args(locals()))

    async def areplace_background(
        self,
        image_url: ImageInput,
        *,
        prompt: str | None = None,
        ref_image_url: ImageInput | None = None,
        negative_prompt: str = "",
        num_images: int = 1,
        seed: int | None = None,
        refine_prompt: bool = True,
        fast: bool = True,
        sync_mode: bool = False,
        context: AnyContext | None = None,
    ) -> BackendResult:
        """:meth:`replace_background`, awaitable from an ``async def`` asset."""
        return await self._arun(context, "replace", **_replace_args(locals()))

    def expand_image(
        self,
        image_url: ImageInput,
        *,
        aspect_ratio: AspectRatio | str | None = None,
        canvas_size: Sequence[int] | None = None,
        original_image_size: Sequence[int] | None = None,
        original_image_location: Sequence[int] | None = None,
        prompt: str = "",
        negative_prompt: str = "",
        seed: int | None = None,
        sync_mode: bool = False,
        context: AnyContext | None = None,
    ) -> BackendResult:
        """Grow the canvas to ``aspect_ratio`` (centred, wins) or ``canvas_size`` with the
        original's size and location; the new area is filled."""
        return self._run(context, "expand", **_expand_args(locals()))

    async def aexpand_image(
        self,
        image_url: ImageInput,
        *,
        aspect_ratio: AspectRatio | str | None = None,
        canvas_size: Sequence[int] | None = None,
        original_image_size: Sequence[int] | None = None,
        original_image_location: Sequence[int] | None = None,
        prompt: str = "",
        negative_prompt: str = "",
        seed: int | None = None,
        sync_mode: bool = False,
        context: AnyContext | None = None,
    ) -> BackendResult:
        """:meth:`expand_image`, awaitable from an ``async def`` asset."""
        return await self._arun(context, "expand", **_expand_args(locals()))


def _given(arguments: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The request arguments among a method's ``locals()``, leaving ``None`` to the model."""
    return {n: arguments[n] for n in names if arguments[n] is not None}


def _replace_args(arguments: dict[str, Any]) -> dict[str, Any]:
    return _given(
        arguments,
        (
            "image_url",
            "prompt",
            "ref_image_url",
            "negative_prompt",
            "num_images",
            "seed",
            "refine_prompt",
            "fast",
            "sync_mode",
        ),
    )


def _expand_args(arguments: dict[str, Any]) -> dict[str, Any]:
    given = _given(
        arguments,
        (
            "image_url",
            "aspect_ratio",
            "canvas_size",
            "original_image_size",
            "original_image_location",
            "prompt",
            "negative_prompt",
            "seed",
            "sync_mode",
        ),
    )
    for name in ("canvas_size", "original_image_size", "original_image_location"):
        if name in given:
            given[name] = list(given[name])
    return given
