"""The ImageRecord table: one row per output image (or failed item), every step.

The step tables *are* the lineage: a row names its parent image, the endpoint,
the exact parameters, the backend, the request id, the cost, the Dagster run
and partition. One pyarrow schema serves every step.

A row says who *made* its image: ``run_id``, ``request_id``, ``backend``, ``seed``,
``unit_price_usd`` and ``created_at`` belong to the run that produced it. A run that
answers a request from an earlier record writes a ``reused`` row (see
:func:`reused_record`) that keeps those columns and names itself in
``reused_in_run_id``; its ``cost_usd`` is 0, as nothing was paid for it, so summing
``cost_usd`` over any set of tables counts each paid call once.

A request that would not change its image (an expansion to the ratio the image already
has) is recorded, not sent: an ``ok`` row with backend :data:`NOOP_BACKEND`, the
parent's image (same sha256) as its own, no request id, ``cost_usd`` and
``unit_price_usd`` 0, and the reason in ``noop_reason``.

Columns added after the first release are nullable, so tables written before them
still read with this schema (the missing column reads as nulls).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

__all__ = [
    "FAILED",
    "IMAGE_RECORD_SCHEMA",
    "NOOP_BACKEND",
    "OK",
    "REUSED",
    "UPSTREAM_FAILED",
    "canonical_json",
    "frame_rows",
    "frame_to_table",
    "make_record_id",
    "records_to_frame",
    "reused_record",
]

OK, FAILED, REUSED = "ok", "failed", "reused"
NOOP_BACKEND = "noop"
"""The ``backend`` of an ok row whose request was not sent because it would not change
its image (an expansion to the ratio the image already has): its image is the parent's
bytes, its cost and unit price 0, and ``noop_reason`` says why."""
UPSTREAM_FAILED = "UpstreamFailed"
"""The ``error_class`` of a row not made because the sku failed in an earlier step (its
message says which step and why); the earlier failure is the root cause."""

IMAGE_RECORD_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
        pa.field("sku", pa.string(), nullable=False),
        pa.field("step", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_class", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("content_type", pa.string()),
        pa.field("parent_sha256", pa.string()),
        pa.field("root_source_uri", pa.string(), nullable=False),
        pa.field("root_source_sha256", pa.string()),
        pa.field("endpoint_id", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("parameters", pa.string(), nullable=False),
        pa.field("request_fingerprint", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("request_id", pa.string()),
        # Why no request was sent for this ok row (backend "noop"): the call would have
        # returned its input unchanged. Null for every other row.
        pa.field("noop_reason", pa.string()),
        pa.field("cost_usd", pa.float64(), nullable=False),
        # The list price per output image (or per call) that applied to the producing
        # call, from the price table in force; null for source and failed rows and for
        # tables written before the column existed.
        pa.field("unit_price_usd", pa.float64()),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        # The run that reused this record's image without a call (status "reused");
        # null on rows whose own run made the image.
        pa.field("reused_in_run_id", pa.string()),
        pa.field("asset_key", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("catalog_row", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(IMAGE_RECORD_SCHEMA.names)


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: equal parameters always give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_record_id(partition: str, step: str, sku: str, variant: str, fingerprint: str) -> str:
    blob = "\x1f".join((partition, step, sku, variant, fingerprint))
    return hashlib.sha256(blob.encode()).hexdigest()


def reused_record(earlier: Mapping[str, Any], run_id: str, /, **placement: Any) -> dict[str, Any]:
    """``earlier`` (an ok or reused record) as a ``reused`` record of run ``run_id``.

    What says how the image was made stays the producer's (``run_id``, request id,
    backend, seed, parameters, ``unit_price_usd``, ``created_at``); ``reused_in_run_id``
    names the reusing run and ``cost_usd`` is 0 (nothing was paid). ``placement`` sets
    where the row now belongs (``record_id``, ``partition``, ``sku``, ``variant``,
    ``catalog_row``, ...); it cannot change the producer or the status.
    """
    fixed = {"status", "run_id", "reused_in_run_id", "cost_usd"}.intersection(placement)
    if fixed:
        raise ValueError(f"a reused record keeps its producer's {sorted(fixed)}")
    row = dict(earlier)
    row.update(placement, status=REUSED, reused_in_run_id=run_id, cost_usd=0.0)
    return row


def records_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A DataFrame with every ImageRecord column and its type, even when empty.

    Keys outside the schema are ignored; a missing key is a null, refused in a
    required column. Built through Arrow directly (no object-dtype frame between).
    """
    table = pa.Table.from_pylist(rows, schema=IMAGE_RECORD_SCHEMA)
    for field, column in zip(IMAGE_RECORD_SCHEMA, table.columns, strict=True):
        if not field.nullable and column.null_count:
            raise ValueError(
                f"ImageRecord column {field.name!r} is required but {column.null_count} "
                "row(s) have no value"
            )
    return table.to_pandas()


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of an ImageRecord frame as plain dicts (Python values, not numpy).

    Goes through Arrow: several times faster than ``DataFrame.to_dict("records")``
    on pandas' Arrow-backed string columns.
    """
    return frame_to_table(frame).to_pylist()


def frame_to_table(frame: pd.DataFrame) -> pa.Table:
    """Validate ``frame`` against :data:`IMAGE_RECORD_SCHEMA` and convert it."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS]
    if missing or extra:
        raise ValueError(
            "ImageRecord frame does not match the schema: "
            f"missing columns {missing or 'none'}, unexpected columns {extra or 'none'}"
        )
    if tuple(frame.columns) != COLUMNS:
        frame = frame[list(COLUMNS)]
    if len(frame) and frame["created_at"].dtype == object:
        frame = frame.assign(created_at=pd.to_datetime(frame["created_at"], utc=True))
    return pa.Table.from_pandas(frame, schema=IMAGE_RECORD_SCHEMA, preserve_index=False)
