"""BriaResource: how to call Bria (key, backend, concurrency, retries, budget, fetch policy).

A thin ``ConfigurableResource`` in the style of dagster-openai: its fields configure a
:class:`~bria_dagster.client.client.BriaClient` (Dagster-free: the session, the backend,
the journals, batch and single-image calls), built in ``setup_for_execution``, closed in
``teardown_after_execution`` and handed out by :meth:`BriaResource.get_client`. Its own
single-image methods, sync and async with typed parameters, add the calling asset's usage
(calls, images, cost per endpoint) to its output metadata. One instance under the key
``bria`` serves any number of pipelines; where a pipeline's outputs go is the pipeline's
business, not the resource's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import dagster as dg
from pydantic import Field, PrivateAttr, create_model

from ..client.backends.base import BackendResult
from ..client.client import (
    BriaClient,
    ExpandArguments,
    RemoveArguments,
    ReplaceArguments,
    selected_backend,
)
from ..client.contracts.base import ImageInput
from ..client.fetch_policy import FetchPolicy
from ..client.prices import PriceTable
from ..client.retry import RetryPolicy
from ..client.runner import Usage
from ..errors import ConfigurationError

__all__ = ["BriaResource", "PriceSettings"]

AnyContext = dg.OpExecutionContext | dg.AssetExecutionContext


class _InAsset(TypedDict, total=False):
    context: AnyContext | None
    """The calling op's or asset's context: the call's usage lands in its metadata."""


class RemoveInAsset(RemoveArguments, _InAsset, total=False):
    """:meth:`BriaResource.remove_background`'s options."""


class ReplaceInAsset(ReplaceArguments, _InAsset, total=False):
    """:meth:`BriaResource.replace_background`'s options."""


class ExpandInAsset(ExpandArguments, _InAsset, total=False):
    """:meth:`BriaResource.expand_image`'s options."""


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
    max_unjournaled_submits: int = Field(
        default=4,
        ge=1,
        le=512,
        description="The most fal submits whose request id is not yet in the journal, at "
        "any moment (each holds a slot from its POST until the journal commit): a run killed "
        "outright (SIGKILL, OOM) pays at most this many requests twice on the re-run. Polls "
        "and downloads are not bounded by it.",
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

    _client: BriaClient | None = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _usage_by_step: dict[str, Usage] = PrivateAttr(default_factory=dict)

    # -- configuration ------------------------------------------------------------------

    def selected_backend(self) -> Literal["fal", "local"]:
        """The backend ``auto`` resolves to: fal when a key is configured, else local."""
        return selected_backend(self.backend, self.fal_key)

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

    def make_client(self) -> BriaClient:
        """A new client configured by these fields (its session starts on first use)."""
        return BriaClient(
            self.fal_key,
            backend=self.backend,
            journal_path=self.journal_path,
            max_concurrency=self.max_concurrency,
            retry=self.retry_policy(),
            request_timeout_s=self.request_timeout_s,
            poll_interval_s=self.poll_interval_s,
            max_poll_interval_s=self.max_poll_interval_s,
            budget_usd=self.budget_usd,
            prices=self.price_table(),
            inline_max_bytes=self.inline_max_bytes,
            on_terminate=self.on_terminate,
            termination_grace_s=self.termination_grace_s,
            max_unjournaled_submits=self.max_unjournaled_submits,
            max_pixels=self.max_pixels,
            fetch_policy=self.fetch_policy(),
            onnx_model_path=self.onnx_model_path,
            onnx_input_size=self.onnx_input_size,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client().session()  # the backend and its pools, before the first step asks

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def get_client(self, context: AnyContext) -> BriaClient:
        """This execution's :class:`BriaClient`, for a step that drives it itself (a batch,
        :class:`~bria_dagster.steps.chain.StepChain`). ``context`` is the calling op's or
        asset's: its log says which backend the step's calls go to."""
        client = self.client()
        context.log.debug(f"bria: {client!r}, {client.max_concurrency} requests at once")
        return client

    def client(self) -> BriaClient:
        """The client, built on first use (in Dagster: in ``setup_for_execution``); used
        directly, call :meth:`close` when done."""
        with self._client_lock:
            if self._client is None:
                self._client = self.make_client()
            return self._client

    def close(self) -> None:
        """Close the client's session: the backend's connection pools and the journals."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def open_journal(self, url: str, *, setting: str) -> None:
        """Open this execution's request journal at ``url`` now, before any request is sent.

        Raises:
            dagster.Failure: it cannot be opened (Postgres unreachable): the message names
                ``setting`` and the server's host:port; metadata carries both.
        """
        try:
            self.client().open_journal(url, setting=setting)
        except ConfigurationError as exc:
            raise dg.Failure(
                description=exc.message,
                metadata={"journal_setting": setting, "error": type(exc).__name__},
            ) from None

    # -- single images (any op or asset) ------------------------------------------------

    def _record(self, context: AnyContext | None, result: BackendResult) -> BackendResult:
        if context is not None:
            # The calling op's or asset's own usage: one resource instance serves every
            # step of an in-process run, so a resource-wide total would mix in other steps.
            op = getattr(context, "op_execution_context", context)  # an asset's context
            step = f"{op.run.run_id}/{op.op_handle}"
            usage = self._usage_by_step.setdefault(step, Usage())
            usage.add(result)
            context.add_output_metadata(usage.metadata())
        return result

    def remove_background(
        self, image_url: ImageInput, **options: Unpack[RemoveInAsset]
    ) -> BackendResult:
        """Cut the subject out of ``image_url`` (URL, path or bytes): one RGBA PNG."""
        context = options.pop("context", None)
        return self._record(context, self.client().remove_background(image_url, **options))

    async def aremove_background(
        self, image_url: ImageInput, **options: Unpack[RemoveInAsset]
    ) -> BackendResult:
        """:meth:`remove_background`, awaitable from an ``async def`` asset."""
        context = options.pop("context", None)
        return self._record(context, await self.client().aremove_background(image_url, **options))

    def replace_background(
        self, image_url: ImageInput, **options: Unpack[ReplaceInAsset]
    ) -> BackendResult:
        """A new background from ``prompt`` or ``ref_image_url`` (exactly one); 1-4 images
        (:meth:`BriaClient.replace_background`)."""
        context = options.pop("context", None)
        return self._record(context, self.client().replace_background(image_url, **options))

    async def areplace_background(
        self, image_url: ImageInput, **options: Unpack[ReplaceInAsset]
    ) -> BackendResult:
        """:meth:`replace_background`, awaitable from an ``async def`` asset."""
        context = options.pop("context", None)
        return self._record(context, await self.client().areplace_background(image_url, **options))

    def expand_image(
        self, image_url: ImageInput, **options: Unpack[ExpandInAsset]
    ) -> BackendResult:
        """Grow the canvas to ``aspect_ratio`` (centred, wins) or ``canvas_size`` with the
        original's size and location; the new area is filled (:meth:`BriaClient.expand_image`)."""
        context = options.pop("context", None)
        return self._record(context, self.client().expand_image(image_url, **options))

    async def aexpand_image(
        self, image_url: ImageInput, **options: Unpack[ExpandInAsset]
    ) -> BackendResult:
        """:meth:`expand_image`, awaitable from an ``async def`` asset."""
        context = options.pop("context", None)
        return self._record(context, await self.client().aexpand_image(image_url, **options))
