"""The ImageRecord format: one row per output image (or failed item), every step.

The step tables *are* the lineage: a row names its parent image, the endpoint,
the exact parameters, the backend, the request id, the cost, the Dagster run
and partition. This module is the one place that names the columns, their types,
the statuses and the groups of columns each reader needs; it imports neither pandas,
pyarrow nor Dagster, so the CLI's fast lineage path can use it.
:mod:`bria_dagster.records.tables` turns it into the Arrow schema and reads and
writes the tables.

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
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "COLUMNS",
    "DERIVED_COLUMNS",
    "FAILED",
    "FINGERPRINT",
    "INDEXED_COLUMNS",
    "LINEAGE_FILTER_COLUMNS",
    "NOOP_BACKEND",
    "OK",
    "OUTCOME_COLUMNS",
    "PRODUCER_COLUMNS",
    "RECORD_COLUMNS",
    "REPORT_COLUMNS",
    "REUSED",
    "REUSE_MARKS",
    "TRACE_COLUMNS",
    "UPSTREAM_FAILED",
    "Column",
    "canonical_json",
    "make_record_id",
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

ColumnType = Literal["string", "int32", "int64", "float64", "timestamp"]


@dataclass(frozen=True)
class Column:
    """One ImageRecord column: its name, its type and whether every row must have it."""

    name: str
    type: ColumnType = "string"
    required: bool = False


RECORD_COLUMNS = (
    Column("record_id", required=True),
    Column("partition", required=True),
    Column("sku", required=True),
    Column("step", required=True),
    Column("variant", required=True),
    Column("status", required=True),
    Column("error_class"),
    Column("error_message"),
    Column("image_uri"),
    Column("image_sha256"),
    Column("width", "int32"),
    Column("height", "int32"),
    Column("content_type"),
    Column("parent_sha256"),
    Column("root_source_uri", required=True),
    Column("root_source_sha256"),
    Column("endpoint_id"),
    Column("backend"),
    Column("parameters", required=True),
    Column("request_fingerprint"),
    Column("seed", "int64"),
    Column("request_id"),
    # Why no request was sent for this ok row (backend "noop"): the call would have
    # returned its input unchanged. Null for every other row.
    Column("noop_reason"),
    Column("cost_usd", "float64", required=True),
    # The list price per output image (or per call) that applied to the producing call,
    # from the price table in force; null for source and failed rows and for tables
    # written before the column existed.
    Column("unit_price_usd", "float64"),
    Column("duration_s", "float64", required=True),
    Column("attempts", "int32", required=True),
    Column("run_id", required=True),
    # The run that reused this record's image without a call (status "reused"); null on
    # rows whose own run made the image.
    Column("reused_in_run_id"),
    Column("asset_key", required=True),
    Column("code_version", required=True),
    Column("created_at", "timestamp", required=True),
    Column("catalog_row", required=True),
)
"""Every column, in table order."""
COLUMNS = tuple(column.name for column in RECORD_COLUMNS)
FINGERPRINT = "request_fingerprint"
"""Equal fingerprints are equal requests (endpoint, inputs, parameters): what reuse keys on."""


def _except(*names: str) -> tuple[str, ...]:
    """Every column but ``names``, in table order."""
    unknown = set(names).difference(COLUMNS)
    assert not unknown, f"not ImageRecord columns: {sorted(unknown)}"
    return tuple(name for name in COLUMNS if name not in names)


PRODUCER_COLUMNS = _except(
    "record_id",
    "partition",
    "sku",
    "variant",
    "status",
    "error_class",
    "error_message",
    "root_source_uri",
    "root_source_sha256",
    FINGERPRINT,
    "cost_usd",
    "reused_in_run_id",
    "asset_key",
    "code_version",
    "catalog_row",
)
"""What an image is and how it was made (by which run, call, price): a reused row keeps
these from the row that made the image; where the row belongs comes from the reusing run."""

INDEXED_COLUMNS = _except(
    "record_id",
    "width",
    "height",
    "content_type",
    FINGERPRINT,
    "duration_s",
    "attempts",
    "code_version",
    "created_at",
    "catalog_row",
)
"""What the lineage index stores of each row (besides ``created_at``, kept as a number)."""

LINEAGE_FILTER_COLUMNS = (
    "sku",
    "status",
    "image_uri",
    "image_sha256",
    "parent_sha256",
    "root_source_uri",
    "root_source_sha256",
)
"""What lineage queries compare (the index keeps them as columns of their own)."""

OUTCOME_COLUMNS = ("sku", "status", "error_class", "error_message", "asset_key")
"""What a batch's verdict reads of each row: which products failed, in which step, why."""

REPORT_COLUMNS = _except("record_id", "root_source_sha256", FINGERPRINT, "asset_key", "catalog_row")
"""What the audit report reads of each row."""

_HOP_DETAILS = (
    "endpoint_id",
    "backend",
    "parameters",
    "seed",
    "request_id",
    "noop_reason",
    "cost_usd",
    "unit_price_usd",
    "run_id",
    "reused_in_run_id",
    "partition",
    "asset_key",
    "created_at",
)
TRACE_COLUMNS = ("hop", "step", "sku", "image_sha256", "image_uri", "parent_sha256", *_HOP_DETAILS)
"""The columns of ``lineage trace``: one row per hop, ``hop`` 0 the image itself."""
DERIVED_COLUMNS = (
    "step",
    "sku",
    "variant",
    "status",
    "failed",
    "image_sha256",
    "image_uri",
    "parent_sha256",
    "root_source_sha256",
    *_HOP_DETAILS,
    "error_class",
    "error_message",
)
"""The columns of ``lineage derived``: ``failed`` flags a failed row."""


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: equal parameters always give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_record_id(partition: str, step: str, sku: str, variant: str, fingerprint: str) -> str:
    blob = "\x1f".join((partition, step, sku, variant, fingerprint))
    return hashlib.sha256(blob.encode()).hexdigest()


REUSE_MARKS = ("status", "reused_in_run_id", "cost_usd")
"""The columns :func:`reused_record` sets: reused in the place it was made, a row differs
from its earlier self only in these (see :func:`bria_dagster.records.tables.restates`)."""
_REUSE_FIXED = frozenset(("run_id", *REUSE_MARKS))


def reused_record(earlier: Mapping[str, Any], run_id: str, /, **placement: Any) -> dict[str, Any]:
    """``earlier`` (an ok or reused record) as a ``reused`` record of run ``run_id``.

    What says how the image was made stays the producer's (``run_id``, request id,
    backend, seed, parameters, ``unit_price_usd``, ``created_at``); ``reused_in_run_id``
    names the reusing run and ``cost_usd`` is 0 (nothing was paid). ``placement`` sets
    where the row now belongs (``record_id``, ``partition``, ``sku``, ``variant``,
    ``catalog_row``, ...); it cannot change the producer or the status.
    """
    fixed = _REUSE_FIXED.intersection(placement)
    if fixed:
        raise ValueError(f"a reused record keeps its producer's {sorted(fixed)}")
    row = dict(earlier)
    row.update(placement, status=REUSED, reused_in_run_id=run_id, cost_usd=0.0)
    return row
