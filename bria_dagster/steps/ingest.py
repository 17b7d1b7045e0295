"""The source step: a batch's catalog file found and loaded, its images fetched and stored.

Every catalog row ends as one ``source`` record: a valid row's image fetched under the
fetch policy, decoded (which validates it and refuses decompression bombs) and stored by
sha256, or the reason it could not be; a rejected row failed, naming its file, row and
column. A row whose image an earlier run of the same batch stored (same sku, same URL,
the bytes still in the store) is reused, not fetched again.

Dagster-free: the ``catalog_batch`` asset hands in what its context knows (the step
context, the image store, the fetch policy, the earlier run's sources) and publishes
what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pandas as pd

from ..client.fetch import fetch_bytes, fetch_client
from ..client.fetch_policy import FetchPolicy
from ..client.images import decode_image, sniff_content_type
from ..errors import BriaError, CatalogError
from ..records.schema import FAILED, OK, REUSED, reused_record
from ..records.store import ImageStore
from ..records.tables import records_to_frame
from .catalog import FORMATS, CatalogBatch, load_catalog, row_json
from .rows import StepContext, StepReport, source_row

__all__ = ["IngestedSources", "find_catalog_file", "ingest_sources", "load_batch_catalog"]

EarlierSources = Mapping[tuple[str, str], Mapping[str, Any]]
"""(sku, source URL) -> the usable source record an earlier run of the batch stored."""


def find_catalog_file(catalog_dir: str, batch: str) -> str:
    """The catalog file of ``batch`` in ``catalog_dir`` (any supported extension)."""
    fs, root = fsspec.core.url_to_fs(catalog_dir)
    prefix = "" if "://" not in catalog_dir else catalog_dir.split("://", 1)[0] + "://"
    for ext in FORMATS:
        path = f"{root.rstrip('/')}/{batch}{ext}"
        if fs.exists(path):
            return prefix + path if prefix else path
    others = [p for p in fs.glob(f"{root.rstrip('/')}/{batch}.*") if not p.endswith(".tmp")]
    if others:
        raise CatalogError(
            f"catalog file {others[0]} for batch {batch!r} has an unsupported type; "
            f"use {', '.join(FORMATS)}"
        )
    raise CatalogError(
        f"no catalog file for batch {batch!r} in {catalog_dir} "
        f"(looked for {batch}{{{','.join(FORMATS)}}}); add the file or remove the partition"
    )


def load_batch_catalog(catalog_dir: str, batch: str) -> CatalogBatch:
    """The validated catalog of ``batch``, from its file in ``catalog_dir``.

    Raises:
        CatalogError: no usable file (the whole batch is unusable; bad rows are not
            errors, they are in ``rejected``).
    """
    return load_catalog(find_catalog_file(catalog_dir, batch), batch=batch)


@dataclass(frozen=True)
class IngestedSources:
    """The source table of a batch and what making it did."""

    frame: pd.DataFrame
    """One ``source`` record per catalog row (rejected ones included), by sku."""
    report: StepReport
    expected_skus: list[str]
    """The skus the source table must hold: every valid row's and every failed one's."""


def ingest_sources(
    ctx: StepContext,
    catalog: CatalogBatch,
    *,
    store: ImageStore,
    policy: FetchPolicy,
    max_pixels: int,
    concurrency: int,
    earlier: EarlierSources,
) -> IngestedSources:
    """Record every row of ``catalog``: fetch, decode and store the images of its valid
    rows (``concurrency`` at a time, over one HTTP client) unless ``earlier`` holds them.

    Decoding is limited to ``max_pixels``; a row whose image cannot be fetched or decoded
    becomes a failed record with the error's class and message, and the batch goes on.
    """
    rows = [
        _rejected_row(ctx, catalog, rejected) for rejected in catalog.rejected.to_dict("records")
    ]
    started = time.perf_counter()
    to_fetch = []
    for entry in catalog.valid.to_dict("records"):
        reused = _reuse(ctx, entry, earlier, store)
        if reused is None:
            to_fetch.append(entry)
        else:
            rows.append(reused)
    if to_fetch:  # an unchanged batch opens no HTTP client at all
        fetcher = _Fetcher(ctx, store, policy, max_pixels)
        rows.extend(asyncio.run(fetcher.all(to_fetch, concurrency)))
    frame = records_to_frame(sorted(rows, key=lambda r: r["sku"]))
    report = StepReport(
        ok=int((frame["status"] == OK).sum()),
        failed=int((frame["status"] == FAILED).sum()),
        reused=int((frame["status"] == REUSED).sum()),
        duration_s=time.perf_counter() - started,
    )
    report.images_written = report.ok
    expected = list(catalog.valid["sku"]) + [r["sku"] for r in rows if r["status"] == FAILED]
    return IngestedSources(frame=frame, report=report, expected_skus=expected)


def _rejected_row(
    ctx: StepContext, catalog: CatalogBatch, rejected: dict[str, Any]
) -> dict[str, Any]:
    number = rejected["row_number"]
    return source_row(
        ctx,
        sku=rejected["sku"] or f"<row {number}>",
        image_url="",
        identity=f"rejected row {number}",
        catalog_row=row_json(rejected),
        error_class="CatalogRowError",
        error_message=f"{Path(catalog.source_path).name} row {number}, column "
        f"{rejected['column']}: {rejected['reason']}",
    )


def _reuse(
    ctx: StepContext, entry: dict[str, Any], earlier: EarlierSources, store: ImageStore
) -> dict[str, Any] | None:
    """The earlier run's record of ``entry``'s image, when its bytes are still stored."""
    record = earlier.get((entry["sku"], entry["image_url"]))
    if record is None or not store.exists(record["image_sha256"], record["content_type"]):
        return None
    return reused_record(record, ctx.run_id, catalog_row=row_json(entry), partition=ctx.partition)


class _Fetcher:
    """Fetches, decodes and stores source images, each row its own record."""

    def __init__(
        self, ctx: StepContext, store: ImageStore, policy: FetchPolicy, max_pixels: int
    ) -> None:
        self.ctx, self.store, self.policy, self.max_pixels = ctx, store, policy, max_pixels

    async def all(self, entries: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
        slots = asyncio.Semaphore(concurrency)
        async with fetch_client(self.policy) as client:  # one SSL context for the batch
            return list(await asyncio.gather(*(self.one(e, slots, client) for e in entries)))

    async def one(
        self, entry: dict[str, Any], slots: asyncio.Semaphore, client: httpx.AsyncClient
    ) -> dict[str, Any]:
        sku, url = entry["sku"], entry["image_url"]
        row = dict(sku=sku, image_url=url, catalog_row=row_json(entry))
        try:
            async with slots:
                fetched = await fetch_bytes(url, self.policy, client=client)
                # Decoding (validation) and storing run off the event loop, in the slot.
                image = await asyncio.to_thread(
                    decode_image, fetched.data, max_pixels=self.max_pixels, source=url
                )
                stored = await asyncio.to_thread(
                    self.store.put, fetched.data, sniff_content_type(fetched.data)
                )
        except BriaError as exc:
            return source_row(
                self.ctx, **row, error_class=type(exc).__name__, error_message=str(exc)
            )
        return source_row(
            self.ctx,
            **row,
            data=fetched.data,
            content_type=stored.content_type,
            width=image.width,
            height=image.height,
            uri=stored.uri,
        )
