"""What a pipeline asset shows in the Dagster UI: its column schema and, per
materialization, a summary in words, a preview with thumbnails and every failure.

Definition metadata (:func:`definition_metadata`): ``dagster/column_schema``, the
ImageRecord columns with a sentence each.

Materialization metadata (:func:`materialization_metadata`), the words first (the UI
lists keys in this order):

- ``summary``: what the run did in words (made, reused, failed; calls, paid, list price);
- ``preview``: "N of M rows" (at most ``preview_rows``, default :data:`PREVIEW_ROWS`),
  failures first (at most half the rows when there are images); each row's sku, variant,
  status, image sha256 and size, a thumbnail for the first :data:`PREVIEW_THUMBNAILS`
  images shown; Dagster shows markdown over 1,000 characters behind "[Show Markdown]";
- ``failures``: every failed row with its full error (only when some row failed);
- ``dagster/row_count`` and the counts ``rows_ok`` (images made by this run),
  ``rows_reused`` (answered from an earlier run's record, no call), ``rows_failed``;
- steps that call Bria only: ``rows_noop`` (of the ``rows_ok``, those recorded without
  a call because it would not change the image: nothing paid), ``backend``,
  ``backend_calls``, ``cost_usd`` (paid by this run; 0 on the local engine),
  ``list_price_usd`` (this run's calls at list price), ``saved_by_reuse_usd`` (the
  reused images at the list price they were made at), the
  ``bria.<endpoint>.calls|images|cost_usd`` and ``bria.retries`` usage keys;
- ``duration_s``, ``images_per_s`` (images written per second), ``failures_by_class``
  and ``image_store``.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from PIL import Image as PILImage

from ..errors import BriaError
from ..records.schema import FAILED, OK, REUSED, UPSTREAM_FAILED
from ..records.store import ImageStore
from ..records.tables import IMAGE_RECORD_SCHEMA
from ..steps.rows import StepReport
from ..steps.settings import API_STEPS, PREVIEW_ROWS

__all__ = [
    "COLUMN_DESCRIPTIONS",
    "PREVIEW_ROWS",
    "PREVIEW_THUMBNAILS",
    "column_schema",
    "definition_metadata",
    "failures_markdown",
    "materialization_metadata",
    "preview_markdown",
    "shorten",
    "summary_markdown",
    "thumbnail",
]


PREVIEW_THUMBNAILS = 6
"""Images of the preview shown as a thumbnail (the first ones); the others by sha256 and
size: thumbnails are data URIs stored in the event log with every materialization."""

SHA_SHOWN = 12

FAILURES_SHOWN = 100
"""Failed rows listed in full in ``failures``; the rest are in the asset's table."""

PREVIEW_ERROR_CHARS = 80

COLUMN_DESCRIPTIONS = {
    "record_id": "Stable id of the row: partition, step, sku, variant and request fingerprint.",
    "partition": "The catalog batch (Dagster partition) the row belongs to.",
    "sku": "The product's SKU from the catalog.",
    "step": f"source, {', '.join(API_STEPS)} or packshot.",
    "variant": "Which output of the sku: source, cutout, scene (scene#0, scene#1, ... with "
    "several num_images), a scene in one aspect ratio (scene@1:1, ...), or a packshot's "
    "channel (amazon_main, ...).",
    "status": "ok: made by the run in run_id (by a call, or recorded without one when the call "
    "would not change the image: see noop_reason); reused: answered from an earlier record "
    "without a call (see reused_in_run_id); failed: see error_class and error_message.",
    "error_class": "Why the row failed (e.g. FetchFailedError, UpstreamFailed); null when ok.",
    "error_message": "The full error of a failed row.",
    "image_uri": "Where the image is stored (content-addressed by its sha256).",
    "image_sha256": "SHA-256 of the image bytes: its identity in lineage.",
    "width": "Image width in pixels.",
    "height": "Image height in pixels.",
    "content_type": "The image's MIME type.",
    "parent_sha256": "SHA-256 of the image this one was made from (null for source rows).",
    "root_source_uri": "The catalog's image URL this chain started from.",
    "root_source_sha256": "SHA-256 of that catalog image.",
    "endpoint_id": "The Bria endpoint that made the image.",
    "backend": "fal or local: where the call ran; noop: no call was made (see noop_reason).",
    "parameters": "The exact request parameters, as canonical JSON.",
    "request_fingerprint": "Hash of endpoint, parameters and inputs: equal fingerprints reuse.",
    "seed": "The seed the backend used.",
    "request_id": "The backend's request id of the producing call.",
    "noop_reason": "Why no request was sent (backend noop): the call would have returned its "
    "input unchanged, e.g. an expansion to the ratio the image already has. The image is the "
    "parent's (same sha256); nothing was paid. Null for every other row.",
    "cost_usd": "Paid for this row by its run (0 on the local engine and for reused rows).",
    "unit_price_usd": "List price per output image of the producing call, from the price table.",
    "duration_s": "Seconds the producing call took.",
    "attempts": "Attempts the producing call needed.",
    "run_id": "The Dagster run that made the image (for a reused row: the earlier run).",
    "reused_in_run_id": "The run that reused this image without a call (null when made here).",
    "asset_key": "The Dagster asset the row belongs to.",
    "code_version": "bria-dagster version that wrote the row.",
    "created_at": "When the image was made (UTC).",
    "catalog_row": "The catalog row this sku came from, as JSON.",
}


def _type_name(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    return {"large_string": "string", "double": "float64"}.get(str(arrow_type), str(arrow_type))


def column_schema() -> dg.TableSchema:
    """The ImageRecord table as a Dagster table schema (types, nullability, descriptions)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=field.name,
                type=_type_name(field.type),
                description=COLUMN_DESCRIPTIONS.get(field.name),
                constraints=dg.TableColumnConstraints(nullable=field.nullable),
            )
            for field in IMAGE_RECORD_SCHEMA
        ]
    )


def definition_metadata() -> dict[str, Any]:
    """Metadata every pipeline asset carries in its definition: its column schema."""
    return {"dagster/column_schema": dg.MetadataValue.table_schema(column_schema())}


def thumbnail(data: bytes, size: int = 96) -> str:
    """A small JPEG of ``data`` as a data URI (cutouts on a light grey background)."""
    img = PILImage.open(io.BytesIO(data))
    img.thumbnail((size, size))
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        canvas = PILImage.new("RGB", img.size, (235, 235, 235))
        canvas.paste(img, mask=img.getchannel("A"))
        img = canvas
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def shorten(text: str, width: int = PREVIEW_ERROR_CHARS) -> str:
    """``text`` on one line, cut at a word boundary to at most ``width`` characters + "…"."""
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    cut = flat[: width + 1].rsplit(" ", 1)[0] if " " in flat[: width + 1] else flat[:width]
    return cut.rstrip(" ,;:") + "…"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~!])")


def _text(text: object) -> str:
    """``text`` on one line, shown as written by markdown (its special characters escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _usd(value: float) -> str:
    """Dollars to the tenth of a cent (list prices are like $0.018), at least two decimals."""
    text = f"${value:,.3f}"
    return text[:-1] if text.endswith("0") else text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_markdown(frame: pd.DataFrame, report: StepReport, backend: str) -> str:
    """What the run did, in two or three sentences."""
    n = len(frame)
    source = _is_source(frame)
    made, reused, failed = report.ok, report.reused, report.failed
    parts = [f"{made} {'fetched' if source else 'made'} by this run"]
    if report.noop:
        parts[0] += f" ({report.noop} not sent: the call would not change the image)"
    if reused:
        again = {"source": "not fetched again", "packshot": "not rendered again"}.get(
            _step(frame) or "", "no call"
        )
        parts.append(f"{reused} reused from earlier runs ({again})")
    parts.append(f"{failed} failed" + (" (see `failures`)" if failed else ""))
    lines = [f"**{_plural(n, 'row')}**: {', '.join(parts)}."]
    if source:
        lines.append("Source images come from the catalog's URLs: no Bria calls, nothing paid.")
        return "\n\n".join(lines)
    if _step(frame) == "packshot":
        lines.append("Packshots are composed here from the cutouts: no Bria calls, nothing paid.")
        return "\n\n".join(lines)
    calls = f"{_plural(report.calls, 'call')} to the {backend} backend"
    calls += f", {_usd(report.cost_usd)} paid"
    if report.calls and backend == "local":
        calls += " (the local engine is free)"
    lines.append(calls + ".")
    prices = []
    if report.calls:
        prices.append(f"these calls would cost {_usd(report.estimated_cost_usd)}")
    if reused:
        whole = "" if report.calls else " (the whole batch)"
        prices.append(f"reuse saved {_usd(_saved_by_reuse(frame))}{whole}")
    if report.calls and reused:
        priced = frame["status"].isin([OK, REUSED])
        total = float(frame.loc[priced, "unit_price_usd"].fillna(0).sum())
        prices.append(f"the whole batch is worth {_usd(total)}")
    if prices:
        where = "At fal list price" if backend == "local" else "At list price"
        lines.append(f"{where}, {'; '.join(prices)}.")
    return "\n\n".join(lines)


def _saved_by_reuse(frame: pd.DataFrame) -> float:
    reused = frame["unit_price_usd"][frame["status"] == REUSED]
    return round(float(reused.fillna(0).sum()), 6)


def _preview_rows(frame: pd.DataFrame, limit: int) -> tuple[pd.DataFrame, int]:
    """The rows to preview, failures first, and how many of them failed.

    Failures may take every row only when there is no image to show; otherwise they
    leave at least half of the rows to images.
    """
    failed = frame["status"] == FAILED
    images = min(int((~failed).sum()), limit // 2)
    n_failed = min(int(failed.sum()), limit - images)
    shown = pd.concat([frame[failed].head(n_failed), frame[~failed].head(limit - n_failed)])
    return shown, n_failed


def preview_markdown(
    frame: pd.DataFrame,
    store: ImageStore,
    limit: int = PREVIEW_ROWS,
    thumbnails: int = PREVIEW_THUMBNAILS,
) -> str:
    """ "N of M rows", then a table of at most ``limit`` rows, failures first.

    Each row: sku, variant, status, the image (a thumbnail for the first ``thumbnails``
    images) or the error cut at a word boundary (in full in ``failures``), the image's
    sha256 (its first 12 hex digits) and size.
    """
    shown, n_failed = _preview_rows(frame, limit)
    failed = int((frame["status"] == FAILED).sum())
    heading = f"**{len(shown)} of {_plural(len(frame), 'row')}**"
    if failed:
        which = f"{failed} failed" if n_failed == failed else f"{n_failed} of {failed} failures"
        heading += f", failures first ({which}; every error in full in `failures`)"
    lines = [
        heading,
        "",
        "| sku | variant | status | image or error | sha256 | size |",
        "|---|---|---|---|---|---|",
    ]
    made = 0
    for row in shown.to_dict("records"):
        status = _text(row["status"])
        if row["status"] == REUSED and row.get("run_id"):
            status = f"reused (made by run {_text(str(row['run_id'])[:8])})"
        sha, size = "", ""
        if row["status"] in (OK, REUSED) and row["image_sha256"]:
            sha = f"`{str(row['image_sha256'])[:SHA_SHOWN]}`"
            if pd.notna(row.get("width")) and pd.notna(row.get("height")):
                size = f"{int(row['width'])}×{int(row['height'])}"
            cell = "(no thumbnail)"
            if made < thumbnails:
                made += 1
                try:
                    cell = f"![{_text(row['sku'])}]({thumbnail(store.get(row['image_sha256']))})"
                except (OSError, BriaError):
                    cell = "(image missing from the store)"
        else:
            cell = _text(shorten(row["error_message"] or ""))
            if row["error_class"] != UPSTREAM_FAILED:  # its message starts "upstream ..."
                cell = f"{_text(row['error_class'] or 'error')}: {cell}"
        lines.append(
            f"| {_text(row['sku'])} | {_text(row['variant'])} | {status} | {cell} | {sha} "
            f"| {size} |"
        )
    return "\n".join(lines)


def failures_markdown(frame: pd.DataFrame, limit: int = FAILURES_SHOWN) -> str | None:
    """Every failed row with its full error (the first ``limit``); ``None`` when none failed.

    A list rather than a table: long errors (paths, URLs) wrap instead of widening the
    metadata column.
    """
    failed = frame[frame["status"] == FAILED]
    if not len(failed):
        return None
    lines = [f"**{_plural(len(failed), 'failed row')}**", ""]
    for row in failed.head(limit).to_dict("records"):
        lines.append(
            f"- **{_text(row['sku'])}** {_text(row['variant'])}, "
            f"{_text(row['error_class'] or 'error')}: {_text(row['error_message'] or '')}"
        )
    if len(failed) > limit:
        lines.append(f"\n{len(failed) - limit} more in the asset's table (status = failed).")
    return "\n".join(lines)


_CALL_KEYS = frozenset({"rows_noop", "backend_calls", "cost_usd", "list_price_usd", "bria.retries"})


def _step(frame: pd.DataFrame) -> str | None:
    return str(frame["step"].iloc[0]) if len(frame) else None


def _is_source(frame: pd.DataFrame) -> bool:
    return _step(frame) == "source"


def materialization_metadata(
    frame: pd.DataFrame,
    report: StepReport,
    *,
    backend: str,
    store: ImageStore,
    preview_rows: int = PREVIEW_ROWS,
) -> dict[str, Any]:
    """The metadata of one materialization of a pipeline asset (see the module doc)."""
    meta: dict[str, Any] = {
        "summary": dg.MetadataValue.md(summary_markdown(frame, report, backend)),
        "preview": dg.MetadataValue.md(preview_markdown(frame, store, preview_rows)),
    }
    failures = failures_markdown(frame)
    if failures:
        meta["failures"] = dg.MetadataValue.md(failures)
    meta["dagster/row_count"] = len(frame)
    local = _step(frame) not in API_STEPS  # source, packshot: no calls, cost or prices
    if not local:
        meta["backend"] = backend
    for key, value in report.metadata().items():
        if local and key in _CALL_KEYS:
            continue  # source fetches URLs, packshot composes: no backend, calls or prices
        meta[key] = value
        if key == "list_price_usd":
            meta["saved_by_reuse_usd"] = _saved_by_reuse(frame)
    failed = frame[frame["status"] == FAILED]
    if len(failed):
        counts = failed["error_class"].value_counts().to_dict()
        meta["failures_by_class"] = dg.MetadataValue.json(
            {str(k): int(v) for k, v in counts.items()}
        )
    meta["image_store"] = dg.MetadataValue.path(store.base_uri)
    return meta
