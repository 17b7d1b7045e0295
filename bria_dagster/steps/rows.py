"""The records of one step: its jobs, the rows they become, and what it may reuse.

Every step (remove, replace, expand) works the same way (:mod:`bria_dagster.steps.chain`
runs them):

1. *plan*: each parent row becomes zero or more :class:`Job` s, each a validated
   request (with a stand-in for the input image, so no bytes are read yet) and
   its fingerprint, or a failure (invalid parameters, failed parent);
2. *reuse*: a job whose fingerprint matches an ok record of an earlier run whose
   image is still in the store is answered from that record (no call), found through
   the asset's :class:`~bria_dagster.records.reuse.ReuseIndex`;
3. *no-op*: a job whose request would return its input unchanged (``Job.noop``: an
   expansion to the ratio the image already has) is recorded, not sent (:func:`noop_row`);
4. *run*: the rest go to the backend, each input read from the store only when its
   request is sent; every output image goes into the store as it arrives and
   becomes one record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..client.backends.base import BackendResult, OutputImage
from ..client.contracts import build_request
from ..client.contracts.base import BriaRequest
from ..client.fingerprint import fingerprint_of, input_fingerprint
from ..client.images import sha256_hex
from ..client.prices import PriceTable
from ..client.runner import Usage
from ..errors import BriaError
from ..records.schema import (
    FAILED,
    NOOP_BACKEND,
    OK,
    canonical_json,
    make_record_id,
    reused_record,
)
from ..records.store import ImageStore

if TYPE_CHECKING:
    from ..packshot.compose import Packshot

__all__ = [
    "PARSED_CATALOG",
    "Job",
    "RequestPlanner",
    "StepContext",
    "StepReport",
    "failed_row",
    "noop_row",
    "ok_rows",
    "reused_rows",
    "source_row",
    "stored_row",
]

logger = logging.getLogger("bria_dagster.steps.rows")

# A stand-in image for validating parameters before any bytes are read.
_PLACEHOLDER = b"\x00"

PARSED_CATALOG = "_catalog"
"""The key under which a row carries its parsed
:class:`~bria_dagster.steps.catalog.CatalogRow` from step to step (not a record column:
the tables keep the ``catalog_row`` JSON, and ignore this key)."""


@dataclass
class StepContext:
    """Who is running: what lands in every record's Dagster columns."""

    partition: str
    run_id: str
    asset_key: str
    code_version: str
    step: str


@dataclass
class Job:
    """One planned request (or a failure decided before any call)."""

    sku: str
    variant: str
    parent: dict[str, Any]
    request: BriaRequest | None = None
    fingerprint: str | None = None
    error: BriaError | None = None
    error_class: str | None = None
    noop: str | None = None
    """Why ``request`` would return its input unchanged: it is recorded, not sent
    (:func:`noop_row`)."""


@dataclass
class StepReport:
    """What one step run did: for materialization metadata."""

    ok: int = 0
    failed: int = 0
    reused: int = 0
    noop: int = 0
    calls: int = 0
    estimated_cost_usd: float = 0.0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    images_written: int = 0
    usage: Usage = field(default_factory=Usage)

    def metadata(self) -> dict[str, Any]:
        """``rows_ok``: images made by this run; ``rows_noop``: those of them recorded
        without a call, as the call would not have changed the image (counted in
        ``rows_ok``); ``rows_reused``: answered from an earlier run's record without a
        call; ``rows_failed``; ``backend_calls``: calls made;
        ``cost_usd``: what they cost (0 on the local engine); ``list_price_usd``: what
        they cost at list price (the price table), whatever the backend."""
        seconds = max(self.duration_s, 1e-9)
        return {
            "rows_ok": self.ok,
            "rows_noop": self.noop,
            "rows_reused": self.reused,
            "rows_failed": self.failed,
            "backend_calls": self.calls,
            "cost_usd": round(self.cost_usd, 6),
            "list_price_usd": round(self.estimated_cost_usd, 6),
            "duration_s": round(self.duration_s, 3),
            "images_per_s": round(self.images_written / seconds, 3),
            **self.usage.metadata(),
        }


class RequestPlanner:
    """Plans the jobs of one step run, validating each distinct set of arguments once.

    Most rows of a batch share their parameters (one prompt template, the same
    ratios), so the pydantic validation and the identity of extra inputs (a local
    reference image is hashed) are done once per distinct ``(endpoint, arguments)``
    rather than once per row. Use a new planner per run: a local reference file may
    change between runs.
    """

    def __init__(self) -> None:
        self._validated: dict[tuple[str, str], _Validated | BriaError] = {}

    def plan(
        self,
        sku: str,
        variant: str,
        parent: dict[str, Any],
        endpoint: str,
        arguments: dict[str, Any],
    ) -> Job:
        """One job: ``arguments`` validated for ``endpoint``, fingerprinted with the parent."""
        key = (endpoint, repr(sorted(arguments.items())))
        entry = self._validated.get(key)
        if entry is None:
            entry = self._validate(endpoint, arguments)
            self._validated[key] = entry
        if isinstance(entry, BriaError):
            return Job(sku, variant, parent, error=entry)
        return Job(
            sku,
            variant,
            parent,
            request=entry.request,
            fingerprint=entry.fingerprint(f"sha256:{parent['image_sha256']}"),
        )

    @staticmethod
    def _validate(endpoint: str, arguments: dict[str, Any]) -> _Validated | BriaError:
        try:
            request = build_request(endpoint, image_url=_PLACEHOLDER, **arguments)
        except BriaError as exc:
            return exc
        others = {
            name: input_fingerprint(value)
            for name, value in request.inputs().items()
            if name != "image_url"
        }
        return _Validated(request, others, request.parameters())


@dataclass(frozen=True)
class _Validated:
    """A validated request (stand-in image) and what its fingerprint needs besides the image."""

    request: BriaRequest
    other_inputs: dict[str, str]
    parameters: dict[str, Any]

    def fingerprint(self, image_id: str) -> str:
        """The request fingerprint with ``image_id`` (``sha256:<hex>``) as its image.

        Equal to :func:`~bria_dagster.client.fingerprint.request_fingerprint` of the request
        with the image's bytes in place of the stand-in.
        """
        inputs = {**self.other_inputs, "image_url": image_id}
        return fingerprint_of(self.request.endpoint_id, inputs, self.parameters)


def _base_row(ctx: StepContext, job: Job) -> dict[str, Any]:
    parent = job.parent
    return {
        "partition": ctx.partition,
        "sku": job.sku,
        "step": ctx.step,
        "parent_sha256": parent.get("image_sha256"),
        "root_source_uri": parent.get("root_source_uri") or "",
        "root_source_sha256": parent.get("root_source_sha256"),
        "endpoint_id": None if job.request is None else job.request.endpoint_id,
        "parameters": canonical_json({} if job.request is None else job.request.parameters()),
        "request_fingerprint": job.fingerprint,
        "run_id": ctx.run_id,
        "asset_key": ctx.asset_key,
        "code_version": ctx.code_version,
        "catalog_row": parent.get("catalog_row") or "{}",
        PARSED_CATALOG: parent.get(PARSED_CATALOG),
        "attempts": 0,
        "cost_usd": 0.0,
        "duration_s": 0.0,
        "created_at": datetime.now(UTC),
    }


def _output_variant(job: Job, index: int, count: int) -> str:
    """The variant of output ``index`` of ``count`` (``scene#1`` when a request has several);
    :func:`~bria_dagster.records.reuse.entries_of` reads the index back."""
    return job.variant if count == 1 else f"{job.variant}#{index}"


def _record_id(ctx: StepContext, job: Job, variant: str) -> str:
    return make_record_id(ctx.partition, ctx.step, job.sku, variant, job.fingerprint or "")


def failed_row(
    ctx: StepContext, job: Job, error_class: str, message: str, *, attempts: int = 0
) -> dict[str, Any]:
    row = _base_row(ctx, job)
    variant = job.variant
    row.update(
        record_id=_record_id(ctx, job, variant),
        variant=variant,
        status=FAILED,
        error_class=error_class,
        error_message=message,
        attempts=attempts,
    )
    return row


def noop_row(ctx: StepContext, job: Job) -> dict[str, Any]:
    """``job`` recorded, not sent: its request would return the parent image unchanged
    (``job.noop`` says why). The row's image is the parent's (same bytes and sha256,
    ``parent_sha256`` still names it, so lineage walks on); no backend, request id, cost
    or unit price."""
    assert job.request is not None and job.noop is not None
    parent = job.parent
    row = _base_row(ctx, job)
    row.update(
        record_id=_record_id(ctx, job, job.variant),
        variant=job.variant,
        status=OK,
        image_uri=parent.get("image_uri"),
        image_sha256=parent.get("image_sha256"),
        width=parent.get("width"),
        height=parent.get("height"),
        content_type=parent.get("content_type"),
        backend=NOOP_BACKEND,
        noop_reason=job.noop,
        unit_price_usd=0.0,
    )
    return row


def reused_rows(ctx: StepContext, job: Job, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``job`` answered by the output rows of an earlier request with its fingerprint."""
    rows = []
    for i, previous in enumerate(earlier):
        variant = _output_variant(job, i, len(earlier))
        rows.append(
            reused_record(
                previous,
                ctx.run_id,
                record_id=_record_id(ctx, job, variant),
                partition=ctx.partition,
                sku=job.sku,
                variant=variant,
                asset_key=ctx.asset_key,
                code_version=ctx.code_version,
                catalog_row=job.parent.get("catalog_row") or "{}",
                **{PARSED_CATALOG: job.parent.get(PARSED_CATALOG)},
                root_source_uri=job.parent.get("root_source_uri") or "",
                root_source_sha256=job.parent.get("root_source_sha256"),
            )
        )
    return rows


def ok_rows(
    ctx: StepContext,
    job: Job,
    result: BackendResult,
    store: ImageStore,
    prices: PriceTable,
    *,
    shared: bool = False,
) -> list[dict[str, Any]]:
    """``job``'s output images, stored, as one record each.

    ``shared``: the result of an identical request of the same run (paid once, there).
    """
    assert job.request is not None
    share = result.cost_usd / max(1, len(result.images))
    return [
        stored_row(
            ctx,
            job,
            _output_variant(job, i, len(result.images)),
            image,
            store,
            backend=result.backend,
            seed=result.seed,
            request_id=result.request_id,
            cost_usd=0.0 if shared else share,
            unit_price_usd=prices.unit_price_usd(job.request),
            duration_s=result.duration_s,
            attempts=result.attempts,
        )
        for i, image in enumerate(result.images)
    ]


def stored_row(
    ctx: StepContext,
    job: Job,
    variant: str,
    image: OutputImage | Packshot,
    store: ImageStore,
    **fields: Any,
) -> dict[str, Any]:
    """An ok record of ``job``'s output ``variant``: ``image`` put in ``store``, with
    ``fields`` (backend, prices, timings) as they are."""
    stored = store.put(image.data, image.content_type)
    row = _base_row(ctx, job)
    row.update(
        record_id=_record_id(ctx, job, variant),
        variant=variant,
        status=OK,
        image_uri=stored.uri,
        image_sha256=stored.sha256,
        width=image.width,
        height=image.height,
        content_type=image.content_type,
        **fields,
    )
    return row


def source_row(
    ctx: StepContext,
    *,
    sku: str,
    image_url: str,
    catalog_row: str,
    data: bytes | None = None,
    content_type: str | None = None,
    width: int | None = None,
    height: int | None = None,
    uri: str | None = None,
    error_class: str | None = None,
    error_message: str | None = None,
    identity: str | None = None,
) -> dict[str, Any]:
    """A ``source`` record: the catalog image as fetched (or why it could not be).

    ``identity`` distinguishes rows without a usable URL (rejected rows) in the record id.
    """
    sha = sha256_hex(data) if data is not None else None
    return {
        "record_id": make_record_id(ctx.partition, "source", sku, "source", identity or image_url),
        "partition": ctx.partition,
        "sku": sku,
        "step": "source",
        "variant": "source",
        "status": OK if error_class is None else FAILED,
        "error_class": error_class,
        "error_message": error_message,
        "image_uri": uri,
        "image_sha256": sha,
        "width": width,
        "height": height,
        "content_type": content_type,
        "parent_sha256": None,
        "root_source_uri": image_url,
        "root_source_sha256": sha,
        "endpoint_id": None,
        "backend": None,
        "parameters": "{}",
        "request_fingerprint": None,
        "seed": None,
        "request_id": None,
        "cost_usd": 0.0,
        "duration_s": 0.0,
        "attempts": 1 if data is not None else 0,
        "run_id": ctx.run_id,
        "asset_key": ctx.asset_key,
        "code_version": ctx.code_version,
        "created_at": datetime.now(UTC),
        "catalog_row": catalog_row,
    }
