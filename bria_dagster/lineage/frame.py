"""Lineage as pandas DataFrames: every record row, and ``trace`` / ``derived`` answers.

The queries are those of the one lineage index (:mod:`bria_dagster.lineage.index`);
this module hands their rows over as DataFrames (times as UTC timestamps, ``seed`` as
nullable integers, the total cost in ``attrs``) and loads the record tables for a
user's own pandas or DuckDB queries.

``trace`` and ``derived`` take a base location (a local folder or any fsspec URL such
as ``s3://bucket/bria`` or ``memory://x``; its cached index is brought up to date
first), an open :class:`~bria_dagster.lineage.index.LineageIndex`, or a records
DataFrame (indexed in memory).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from ..errors import IndexUnavailableError
from ..records.schema import INDEXED_COLUMNS
from ..records.tables import IMAGE_RECORD_SCHEMA, read_all
from .index import LineageIndex, QueryResult, open_index

__all__ = [
    "derived",
    "derived_images",
    "load_records",
    "to_frame",
    "trace",
    "trace_image",
]

DEFAULT_BASE = "bria_data"
RecordsOrBase = pd.DataFrame | LineageIndex | str | os.PathLike[str]


def load_records(
    base: str | os.PathLike[str] = DEFAULT_BASE, *, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every record row under ``<base>/tables``, read with the ImageRecord schema.

    ``columns`` limits what is read. An empty or missing store gives an empty frame
    with the requested columns.
    """
    return read_all(base, columns).to_pandas()


def trace(
    image: str, records_or_base: RecordsOrBase = DEFAULT_BASE, *, all_records: bool = False
) -> pd.DataFrame:
    """The chain from an output image back to its source (:meth:`LineageIndex.trace`)."""
    with _index(records_or_base) as index:
        return to_frame(index.trace(image, all_records=all_records))


def derived(
    source: str, records_or_base: RecordsOrBase = DEFAULT_BASE, *, include_failed: bool = False
) -> pd.DataFrame:
    """Every image made from a sku, source or image (:meth:`LineageIndex.derived`)."""
    with _index(records_or_base) as index:
        return to_frame(index.derived(source, include_failed=include_failed))


def trace_image(image: str, base: str | os.PathLike[str] = DEFAULT_BASE) -> list[dict[str, Any]]:
    """For Dagster code: the lineage of ``image`` under ``base`` as plain dicts, output first."""
    with _index(base) as index:
        return index.trace(image).rows


def derived_images(
    source: str, base: str | os.PathLike[str] = DEFAULT_BASE, *, include_failed: bool = False
) -> list[dict[str, Any]]:
    """For Dagster code: every image made from ``source`` under ``base``, as plain dicts."""
    with _index(base) as index:
        return index.derived(source, include_failed=include_failed).rows


def to_frame(result: QueryResult) -> pd.DataFrame:
    """A query's rows as a DataFrame: ``created_at`` as UTC timestamps, ``seed`` as nullable
    integers; ``attrs`` holds ``total_cost_usd`` (and ``source_uri`` for a trace)."""
    frame = pd.DataFrame(result.rows, columns=list(result.columns))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["cost_usd"] = frame["cost_usd"].astype(float)
    frame.attrs["total_cost_usd"] = result.total_cost_usd
    if result.source_uri is not None:
        frame.attrs["source_uri"] = result.source_uri
    return frame


@contextlib.contextmanager
def _index(records_or_base: RecordsOrBase) -> Iterator[LineageIndex]:
    """The index to ask: the one given (left open), one of a frame's rows, or a base's."""
    if isinstance(records_or_base, LineageIndex):
        yield records_or_base
        return
    if isinstance(records_or_base, pd.DataFrame):
        index = LineageIndex.of_records(_indexed_columns(records_or_base))
    else:
        try:
            index = open_index(records_or_base)
        except IndexUnavailableError:  # a read-only store: index its tables in memory
            index = open_index(records_or_base, persist=False)
    with index:
        yield index


def _indexed_columns(frame: pd.DataFrame) -> pa.Table:
    """What the index keeps of ``frame``'s rows, with the ImageRecord types."""
    names = [*INDEXED_COLUMNS, "created_at"]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"records lack the lineage columns {missing}")
    schema = pa.schema([IMAGE_RECORD_SCHEMA.field(name) for name in names])
    part = frame[names]
    if len(part) and part["created_at"].dtype == object:
        part = part.assign(created_at=pd.to_datetime(part["created_at"], utc=True))
    return pa.Table.from_pandas(part, schema=schema, preserve_index=False)
