"""The one reader and writer of the ImageRecord step tables.

Each asset partition is one Parquet file at
``<base>/tables/<asset name>/<partition>.parquet`` (:meth:`PipelineStorage.table_path`),
written with :data:`IMAGE_RECORD_SCHEMA`; the base is a local folder or any fsspec URL.
Writes are atomic. The IO manager, lineage and its index, the audit report, reuse,
the retry schedule and the samples all read through here, so a table written before a
column existed, a refused credential or a stray file reads the same way everywhere:
missing columns as nulls, a :class:`~bria_dagster.errors.StorageAccessError`, a
:class:`~bria_dagster.errors.RecordTableError` naming the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RecordTableError, storage_access, storage_access_error
from .listing import is_local, scan_tables, tables_location
from .schema import COLUMNS, FAILED, OK, RECORD_COLUMNS, REUSE_MARKS, REUSED
from .storage import AssetName, PipelineStorage
from .store import write_bytes

__all__ = [
    "IMAGE_RECORD_SCHEMA",
    "frame_rows",
    "frame_to_table",
    "read_all",
    "read_records",
    "read_table",
    "records_to_frame",
    "table_files",
    "table_path",
    "update_table",
    "write_table",
]

_ARROW_TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
IMAGE_RECORD_SCHEMA = pa.schema(
    [pa.field(c.name, _ARROW_TYPES[c.type], nullable=not c.required) for c in RECORD_COLUMNS]
)
"""The Arrow schema of every step table (:data:`~bria_dagster.records.schema.RECORD_COLUMNS`)."""


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


def checked_columns(columns: Sequence[str] | None) -> list[str]:
    """``columns`` (default: all) as a list; an unknown name is a ``ValueError``."""
    if columns is None:
        return list(COLUMNS)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown ImageRecord columns {unknown}; known: {list(COLUMNS)}")
    return list(columns)


def table_path(base: str, asset_key: AssetName, partition: str | None) -> str:
    """Where the records of one asset partition live (:meth:`PipelineStorage.table_path`)."""
    return PipelineStorage.of(base).table_path(asset_key, partition)


def read_records(path: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """The records at ``path`` (``columns``: only those) as an Arrow table with the
    ImageRecord types, or ``None`` when no table was written there yet.

    A column the file lacks (written before the column existed) reads as nulls.
    """
    wanted = checked_columns(columns)
    fs, root = fsspec.core.url_to_fs(path)
    try:
        with storage_access(path, "read record table"):
            if not fs.exists(root):
                return None
            if is_local(path):
                return pq.read_table(root, schema=IMAGE_RECORD_SCHEMA, columns=wanted)
            with fs.open(root, "rb") as fh:
                return pq.read_table(fh, schema=IMAGE_RECORD_SCHEMA, columns=wanted)
    except FileNotFoundError:  # removed between the check and the read
        return None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        if storage_access_error(path, exc, "read record table") is not None:
            raise
        raise RecordTableError(
            f"cannot read record table {path} with the ImageRecord schema: {exc}. "
            "Remove or rewrite it (only pipeline-written Parquet belongs under tables/)."
        ) from exc


def read_table(path: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """:func:`read_records` as a DataFrame (``None`` when no table was written yet)."""
    table = read_records(path, columns)
    return None if table is None else table.to_pandas()


def write_table(path: str, frame: pd.DataFrame | pa.Table) -> None:
    """Write ``frame`` (checked against the schema) to ``path`` atomically."""
    fs, root = fsspec.core.url_to_fs(path)
    table = frame if isinstance(frame, pa.Table) else frame_to_table(frame)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    with storage_access(path, "write record table"):
        write_bytes(fs, root, buf.getvalue())


def update_table(path: str, frame: pd.DataFrame) -> bool:
    """Write ``frame`` to ``path`` (atomically) unless the table stored there already says
    everything it says; whether it was written.

    An unchanged re-run answers every request from earlier records and meets its
    failures again (it retries them): its rows restate the stored ones (:func:`restates`).
    Rewriting the table would only swap in this run's id, so it is kept and nothing of
    the pipeline's storage (table, reuse index) is written: the run's own record is its
    materialization. A row made by this run, a new, dropped or other failure, a changed
    product writes the table.
    """
    table = frame_to_table(frame)
    if len(table) and pc.all(pc.is_in(table["status"], pa.array([REUSED, FAILED]))).as_py():
        try:
            stored = read_records(path)
        except RecordTableError:  # unreadable: written anew
            stored = None
        if stored is not None and restates(table, stored):
            return False
    write_table(path, table)
    return True


_RUN_OWN = ("run_id", "created_at")
"""What a failed row takes from the run that met the failure."""


def restates(table: pa.Table, stored: pa.Table) -> bool:
    """Whether ``table`` holds ``stored``'s rows, in order, each one reused as it is or
    failed as it was: a ``reused`` row equal to a stored ok or reused one in every column
    but those a reuse sets (:data:`~bria_dagster.records.schema.REUSE_MARKS`), a failed
    row equal to a stored failed one but for the run that met it and when. So the images,
    their producers, the failures and where each row belongs are what ``stored`` says."""
    if len(table) != len(stored):
        return False
    reused = pc.equal(table["status"], REUSED)
    failed = pc.equal(table["status"], FAILED)
    as_stored = pc.or_(
        pc.and_(reused, pc.is_in(stored["status"], pa.array([OK, REUSED]))),
        pc.and_(failed, pc.equal(stored["status"], FAILED)),
    )
    if not pc.all(as_stored).as_py():
        return False
    marks = (*REUSE_MARKS, *_RUN_OWN)
    if not all(table[name].equals(stored[name]) for name in COLUMNS if name not in marks):
        return False
    # The run's own columns: the producer's on reused rows; a reuse's marks on failed ones.
    return all(
        table.filter(rows)[name].equals(stored.filter(rows)[name])
        for rows, names in ((reused, _RUN_OWN), (failed, REUSE_MARKS[1:]))
        for name in names
    )


def table_files(base: str | os.PathLike[str]) -> list[str]:
    """The step tables under ``<base>/tables/<asset name>/<partition>.parquet``, sorted."""
    tables = tables_location(base).rstrip("/")
    return [f"{tables}/{relative}" for relative in sorted(scan_tables(tables))]


def read_all(base: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """``columns`` of every record row under ``base``, table after table (several at once)."""
    wanted = checked_columns(columns)
    paths = table_files(base)
    if not paths:
        return IMAGE_RECORD_SCHEMA.empty_table().select(wanted)
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        parts = list(pool.map(lambda path: read_records(path, wanted), paths))
    return pa.concat_tables(part for part in parts if part is not None)
