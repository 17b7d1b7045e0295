"""An audit report of one catalog batch: one self-contained HTML page a person can open.

The step tables of the batch (``<base>/tables/<pipeline>__<asset>/<batch>.parquet``,
every ``<pipeline>/*`` asset present, so a step added later appears without a change
here) are read once and shown as:

* a header: batch, pipeline, storage, when, totals (products, images, failures, paid
  ``cost_usd`` and list price) and the runs that made or reused the rows;
* every failure with its full ``error_class`` and ``error_message`` (root causes first,
  then the rows that failed because an earlier step had);
* the cost per step: rows ok / reused / failed, backend calls, ``cost_usd``, list price;
* per sku (a ``<details>`` each), the chain source -> cutout -> scene(s) ->
  expansion(s), linked by ``parent_sha256`` -> ``image_sha256``; each image with its
  thumbnail, parameters, backend, request id, cost, producing run and reusing run.

Nothing is fetched when the page opens: the CSS is inline and the thumbnails are
``data:`` URIs (JPEG, or a palette PNG over a checkerboard when the image has
transparency), made once per distinct image sha256. Every text from the tables
(SKUs, parameters, error messages) is HTML-escaped.

:func:`write_audit_report` keeps the page when the batch's step tables and the renderer
are those it was written from (nothing read but the tables, nothing written); otherwise it
streams the page to a temporary file and moves it into place (any fsspec location),
drawing again only the products whose rows changed and reading only the images whose
thumbnails are not cached (:mod:`.cache`). It holds in memory the batch's record rows and
thumbnails, not its images. :func:`render_audit_report` returns the page as a string.

The package: :mod:`.tables` lists and reads the step tables, :mod:`.model` links the
rows into chains and sums them, :mod:`.html` writes the page (its CSS is the package
data file ``report.css``), :mod:`.thumbnails` makes the images, :mod:`.cache` keeps what the
last page was made from and its parts. Nothing here imports
Dagster: the audit report asset's metadata is built in the Dagster layer.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ...errors import StorageAccessError, UnknownBatchError, storage_access
from ...records.storage import PipelineStorage
from .cache import Manifest, ReportCache, ReportParts, page_size, renderer_key, tables_key
from .html import Rendered, render_page
from .model import (
    DEFAULT_PIPELINE,
    AuditReport,
    ProductStep,
    ProductSummary,
    ReportBatch,
    ReportWork,
    StepSummary,
)
from .tables import StepTables
from .thumbnails import THUMBNAIL_PX, thumbnail_data_uri

__all__ = [
    "DEFAULT_PIPELINE",
    "THUMBNAIL_PX",
    "AuditReport",
    "ProductStep",
    "ProductSummary",
    "ReportWork",
    "StepSummary",
    "UnknownBatchError",
    "audit_batches",
    "default_report_path",
    "render_audit_report",
    "thumbnail_data_uri",
    "write_audit_report",
]


def default_report_path(
    storage: PipelineStorage | str | os.PathLike[str], batch: str, pipeline: str = DEFAULT_PIPELINE
) -> str:
    """``<base>/reports/<pipeline>/<batch>.html``: where a report goes when no ``out`` is given."""
    return f"{PipelineStorage.of(storage).base.rstrip('/')}/reports/{pipeline}/{batch}.html"


def audit_batches(
    storage: PipelineStorage | str | os.PathLike[str], pipeline: str = DEFAULT_PIPELINE
) -> list[str]:
    """The batches that have at least one step table of ``pipeline`` under ``storage``."""
    tables = StepTables(PipelineStorage.of(storage).base, pipeline)
    return sorted({stem for _, stem, _ in tables.files})


def render_audit_report(
    storage: PipelineStorage | str | os.PathLike[str],
    batch: str,
    *,
    pipeline: str = DEFAULT_PIPELINE,
    thumbnail_px: int = THUMBNAIL_PX,
) -> str:
    """The audit report of ``batch`` as one HTML string (see :func:`write_audit_report`),
    drawn in full (no cache is read or written).

    The whole page is held in memory: for big batches write it with
    :func:`write_audit_report` instead.
    """
    buffer = io.StringIO()
    render_page(
        ReportBatch.load(PipelineStorage.of(storage).base, batch, pipeline),
        buffer.write,
        thumbnail_px,
        ReportParts(renderer=""),
    )
    return buffer.getvalue()


def write_audit_report(
    storage: PipelineStorage | str | os.PathLike[str],
    batch: str,
    out: str | os.PathLike[str] | None = None,
    *,
    pipeline: str = DEFAULT_PIPELINE,
    thumbnail_px: int = THUMBNAIL_PX,
) -> AuditReport:
    """Write the audit report of ``batch`` of ``pipeline`` as one self-contained HTML file,
    unless the page there is already current.

    Args:
        storage: the pipeline's storage (a :class:`~bria_dagster.PipelineStorage`, a folder
            or an fsspec URL): the base holding ``tables/`` and ``images/``.
        batch: the catalog batch (the Dagster partition key).
        out: where to write (a local path or any fsspec URL); default
            :func:`default_report_path` (``<base>/reports/<pipeline>/<batch>.html``).
        pipeline: the pipeline's name, the first part of its asset keys.
        thumbnail_px: the longest side of the thumbnails.

    The batch's step tables are hashed (their bytes, not the images) with the renderer's
    own fingerprint: when both match the page last written at ``out`` (and it is still
    there, same size), the page is kept and nothing is written (``work.reused``).
    Otherwise the page is drawn again from the cache under
    ``<base>/reports/<pipeline>/.cache`` (:mod:`.cache`): only the products whose rows
    changed are drawn and only the images not seen before are read for their thumbnails.

    The page is written to a temporary file first, then moved into place (a local rename,
    or one upload): no reader sees a partial page.

    Raises:
        UnknownBatchError: no table of ``batch`` (the message names the batches there are).
        StorageAccessError: the storage refused access.
        RecordTableError: a table does not read with the ImageRecord schema.
    """
    if thumbnail_px < 16:
        raise ValueError(f"thumbnail_px must be at least 16, not {thumbnail_px}")
    base = PipelineStorage.of(storage).base
    found = StepTables(base, pipeline).of_batch(batch)
    target = os.fspath(out) if out is not None else default_report_path(base, batch, pipeline)
    fs, path = fsspec.core.url_to_fs(target)
    local = isinstance(fs, LocalFileSystem)
    url = Path(path).as_uri() if local else target
    shown_at = path if local else url
    cache = ReportCache(base, pipeline, batch)
    renderer = renderer_key(thumbnail_px, base, pipeline, batch)
    tables = tables_key(found)
    manifest = cache.manifest()
    kept = _kept_page(manifest, renderer, tables, url, page_size(target), shown_at)
    if isinstance(kept, AuditReport):
        return kept
    reason = kept
    data = ReportBatch.load(base, batch, pipeline, found)
    drawn: list[Rendered] = []

    def render(write: Callable[[str], Any]) -> None:
        drawn.append(render_page(data, write, thumbnail_px, cache.parts(renderer)))

    with storage_access(url, "write audit report"):
        size = _write_atomically(fs, path, render)
    page = drawn[0]
    summary = replace(
        page.totals, path=shown_at, url=url, size_bytes=size, missing_images=page.missing
    )
    pages = {url: size}
    if manifest is not None and (manifest.renderer, manifest.tables) == (renderer, tables):
        pages = {**manifest.pages, url: size}
    work = replace(page.work, reason=reason, files_written=1)
    try:
        with storage_access(cache.manifest_url, "write audit report cache"):
            cache.save(Manifest(renderer, tables, pages, summary.plain()), page.parts, _write_cache)
    except (StorageAccessError, OSError) as exc:  # the page is written: the cache is a saving
        work = replace(work, reason=f"{reason}; the cache was not written ({exc})")
    else:
        work = replace(work, files_written=3)
    return replace(summary, work=work)


def _kept_page(
    manifest: Manifest | None,
    renderer: str,
    tables: str,
    url: str,
    size: int | None,
    shown_at: str,
) -> AuditReport | str:
    """The report of the page at ``url`` (``size`` bytes, ``None`` when absent) when
    ``manifest`` says it is current for these inputs; else why it must be drawn again."""
    if manifest is None:
        return "no earlier report of this batch (or its cache did not read)"
    stale = manifest.stale(renderer, tables, url, size)
    if stale is not None:
        return stale
    work = ReportWork(
        reused=True, reason="the step tables and the report's format are those of the page there"
    )
    try:
        totals = {**manifest.summary, "size_bytes": manifest.pages[url]}
        return AuditReport.from_plain(totals, path=shown_at, url=url, work=work)
    except (TypeError, KeyError, ValueError):
        return "its cached totals did not read"


def _write_cache(url: str, render: Callable[[Callable[[str], Any]], None]) -> int:
    """A cache file, written atomically but not synced: one lost in a crash costs a redraw."""
    return _write_atomically(*fsspec.core.url_to_fs(url), render, sync=False)


def _write_atomically(
    fs: fsspec.AbstractFileSystem,
    path: str,
    render: Callable[[Callable[[str], Any]], None],
    *,
    sync: bool = True,
) -> int:
    """Stream ``render``'s text to ``path`` so that no reader sees a partial file (and,
    with ``sync``, a local one is on disk before it has its name).

    A local file is written under a temporary name in its folder and renamed into place
    (as :func:`bria_dagster.records.store.write_bytes` does, without holding the page in memory);
    elsewhere the page goes to a local temporary file, then up in one ``put``.
    Returns the size in bytes.
    """
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                render(fh.write)
                fh.flush()
                size = fh.tell()
                if sync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size
    with tempfile.TemporaryDirectory(prefix="bria-report-") as folder:
        local = os.path.join(folder, "report.html")
        with open(local, "w", encoding="utf-8", newline="\n") as fh:
            render(fh.write)
            size = fh.tell()
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with open(local, "rb") as src, fs.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return size
