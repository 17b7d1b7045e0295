"""BriaResource: the Dagster resource every op and asset uses to call Bria.

A thin ``ConfigurableResource`` around the two backends, in the style of
dagster-openai: configure the key from ``EnvVar("FAL_KEY")``, call
``remove_background`` / ``replace_background`` / ``expand_image`` from any op or
asset, and the usage (calls, images, cost per endpoint) lands in the calling
asset's output metadata.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from .backends.base import Backend, BackendResult
from .backends.fal import FalBackend
from .backends.local import LocalBackend
from .endpoints import BriaRequest, build_request, endpoint_for
from .fetch import FetchPolicy
from .journal import RequestJournal
from .retry import RetryPolicy
from .runner import BatchProgress, ItemOutcome, run_batch
from .store import ImageStore

__all__ = ["BriaResource", "Usage"]


@dataclass
class Usage:
    """Calls, images and list-price cost per endpoint, as asset metadata."""

    calls: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    cost_usd: dict[str, float] = field(default_factory=dict)
    retries: int = 0

    def add(self, result: BackendResult) -> None:
        name = endpoint_for(result.endpoint_id).name
        self.calls[name] += 0 if result.reattached else 1
        self.images[name] += len(result.images)
        self.cost_usd[name] = round(self.cost_usd.get(name, 0.0) + result.cost_usd, 6)
        self.retries += len(result.retries)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(set(self.calls) | set(self.images)):
            out[f"bria.{name}.calls"] = int(self.calls[name])
            out[f"bria.{name}.images"] = int(self.images[name])
            out[f"bria.{name}.cost_usd"] = float(self.cost_usd.get(name, 0.0))
        out["bria.retries"] = self.retries
        return out


class BriaResource(dg.ConfigurableResource):
    """Bria background remove / replace and image expand, on fal.ai or offline.

    Example::

        BriaResource(fal_key=dg.EnvVar("FAL_KEY"))   # fal when the key is set
        BriaResource(backend="local")                 # always the embedded engine
    """

    fal_key: str | None = Field(
        default=None,
        description="fal API key; use EnvVar('FAL_KEY'). Never logged or recorded.",
    )
    backend: Literal["auto", "fal", "local"] = Field(
        default="auto", description="auto = fal when a key is set, else the local engine."
    )
    storage: str = Field(
        default="bria_data",
        description="Base location (folder or fsspec URL) for images/ and tables/.",
    )
    journal_path: str | None = Field(
        default=None,
        description="SQLite request journal (local file). Default: <storage>/journal.sqlite "
        "for a local storage, else ./.bria_journal.sqlite.",
    )
    max_concurrency: int = Field(default=16, ge=1, le=512, description="Requests in flight.")
    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per network step.")
    retry_base_delay_s: float = Field(default=0.5, gt=0, description="First retry backoff.")
    retry_max_delay_s: float = Field(default=30.0, gt=0, description="Backoff cap.")
    request_timeout_s: float = Field(
        default=900.0, gt=0, description="Per request, queue wait included; then cancelled."
    )
    poll_interval_s: float = Field(default=0.1, gt=0, description="First status poll delay.")
    max_poll_interval_s: float = Field(default=1.0, gt=0, description="Status poll delay cap.")
    budget_usd: float | None = Field(
        default=None, ge=0, description="List-price cap per materialization (None = no cap)."
    )
    inline_max_bytes: int = Field(
        default=2 * 1024 * 1024, description="Local inputs up to this size go as data URIs."
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

    _usage: Usage = PrivateAttr(default_factory=Usage)
    _usage_by_step: dict[str, Usage] = PrivateAttr(default_factory=dict)

    # -- configuration ------------------------------------------------------------------

    def selected_backend(self) -> Literal["fal", "local"]:
        """The backend ``auto`` resolves to: fal when a key is configured, else local."""
        if self.backend == "auto":
            return "fal" if self._key() else "local"
        return self.backend

    def _key(self) -> str | None:
        return self.fal_key or os.environ.get("FAL_KEY") or None

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

    def image_store(self) -> ImageStore:
        return ImageStore(self.storage.rstrip("/") + "/images")

    def _journal_file(self) -> str:
        if self.journal_path:
            return self.journal_path
        if "://" not in self.storage:
            return str(Path(self.storage) / "journal.sqlite")
        return ".bria_journal.sqlite"

    def make_backend(self) -> Backend:
        """A fresh backend (create it inside the event loop that will use it)."""
        if self.selected_backend() == "fal":
            key = self._key()
            if not key:
                raise dg.DagsterInvalidConfigError(
                    "BriaResource(backend='fal') needs a key: set FAL_KEY or fal_key", [], None
                )
            return FalBackend(
                key,
                journal=RequestJournal(self._journal_file()),
                retry=self.retry_policy(),
                request_timeout_s=self.request_timeout_s,
                poll_interval_s=self.poll_interval_s,
                max_poll_interval_s=self.max_poll_interval_s,
                inline_max_bytes=self.inline_max_bytes,
                max_pixels=self.max_pixels,
            )
        matte_model = None
        if self.onnx_model_path:
            from .engine.onnx_matte import OnnxMatteModel

            size = (self.onnx_input_size, self.onnx_input_size)
            matte_model = OnnxMatteModel(self.onnx_model_path, input_size=size)
        return LocalBackend(  # outputs go to the ImageStore; its own files are temporary
            fetch_policy=self.fetch_policy(),
            max_pixels=self.max_pixels,
            matte_model=matte_model,
        )

    # -- batch (what the assets use) ----------------------------------------------------

    def run_batch(
        self,
        items: Iterable[tuple[Hashable, BriaRequest]],
        on_outcome: Callable[[ItemOutcome], None],
        *,
        total: int | None = None,
        on_progress: Callable[[BatchProgress], None] | None = None,
    ) -> Usage:
        """Run requests with bounded concurrency; ``on_outcome`` sees each as it completes.

        Returns the usage of this batch (also accumulated for :meth:`usage_metadata`).
        """
        usage = Usage()

        async def drive() -> None:
            backend = self.make_backend()
            try:
                outcomes: AsyncIterator[ItemOutcome] = run_batch(
                    backend,
                    items,
                    max_concurrency=self.max_concurrency,
                    budget_usd=self.budget_usd,
                    total=total,
                    on_progress=on_progress,
                )
                async for outcome in outcomes:
                    if outcome.result is not None and not outcome.shared:
                        usage.add(outcome.result)
                        self._usage.add(outcome.result)
                    # Storing outputs (hash, write, fsync) must not stall the polling loop.
                    await asyncio.to_thread(on_outcome, outcome)
            finally:
                await backend.aclose()

        asyncio.run(drive())
        return usage

    # -- single images (any op or asset) ------------------------------------------------

    def _run_one(
        self,
        endpoint: str,
        context: dg.OpExecutionContext | dg.AssetExecutionContext | None,
        arguments: dict[str, Any],
    ) -> BackendResult:
        request = build_request(endpoint, **arguments)

        async def once() -> BackendResult:
            backend = self.make_backend()
            try:
                return await backend.run(request)
            finally:
                await backend.aclose()

        result = asyncio.run(once())
        self._usage.add(result)
        if context is not None:
            # The calling op's or asset's own usage: one resource instance serves every
            # step of an in-process run, so the total would mix in other steps' calls.
            op = getattr(context, "op_execution_context", context)  # an asset's context
            step = f"{op.run.run_id}/{op.op_handle}"
            usage = self._usage_by_step.setdefault(step, Usage())
            usage.add(result)
            context.add_output_metadata(usage.metadata())
        return result

    def remove_background(
        self,
        image_url: Any,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext | None = None,
        **params: Any,
    ) -> BackendResult:
        """Cut the subject out of ``image_url`` (URL, path or bytes): RGBA PNG."""
        return self._run_one("remove", context, {"image_url": image_url, **params})

    def replace_background(
        self,
        image_url: Any,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext | None = None,
        **params: Any,
    ) -> BackendResult:
        """New background from ``prompt=`` or ``ref_image_url=``; ``num_images`` 1-4."""
        return self._run_one("replace", context, {"image_url": image_url, **params})

    def expand_image(
        self,
        image_url: Any,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext | None = None,
        **params: Any,
    ) -> BackendResult:
        """Expand to ``canvas_size=`` (and placement) or ``aspect_ratio=``."""
        return self._run_one("expand", context, {"image_url": image_url, **params})

    def usage_metadata(self) -> dict[str, Any]:
        """Usage so far through this resource instance, as ``bria.<endpoint>.*`` keys."""
        return self._usage.metadata()
