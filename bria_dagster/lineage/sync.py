"""Bringing the lineage index up to date with the Parquet step tables.

:func:`sync_tables` re-reads only the tables whose size or stamp changed (mtime
locally; ETag and last-modified time in an object store) and drops vanished ones, all
in one transaction; when nothing changed only the files are listed. Concurrent syncs on
one machine serialise on SQLite's write lock: each re-lists inside its write
transaction, so the second finds the work done. A missing index (or one of an older
layout) is built whole first by :func:`build_index`, with the bulk paths only a first
build can afford (no journal, indexes at the end, a temporary file renamed into place).
Reading a table is the only step that imports pyarrow and numpy (through
:mod:`bria_dagster.records.tables`).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..records.listing import scan_tables
from ..records.schema import INDEXED_COLUMNS
from .database import (
    DETAIL_COLUMNS,
    DETAIL_SEPARATOR,
    FILTER_COLUMNS,
    KEY_COLUMNS,
    KEY_HEX,
    ROW_BITS,
    SHA_KEYS,
    build_lock,
    connect_bulk,
    create_indexes,
    drop_indexes,
    finish_bulk,
    install,
    is_current,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = [
    "HELD_TABLE",
    "SyncStats",
    "build_index",
    "load_table",
    "read_columns",
    "sync_tables",
]

HELD_TABLE = "<records>"
"""The ``tables`` entry of rows a caller holds (not read from a file)."""
_BULK_BELOW = 100_000  # rows kept from before: fewer, and indexes are rebuilt at the end
_INSERT = "INSERT INTO records (id, {names}, nulls, details) VALUES ({marks})".format(
    names=", ".join((*FILTER_COLUMNS, *KEY_COLUMNS)),
    marks=", ".join("?" * (len(FILTER_COLUMNS) + len(KEY_COLUMNS) + 3)),
)


@dataclass
class SyncStats:
    """What a sync did: tables seen, tables (re)read or dropped, rows, seconds."""

    tables: int = 0
    records: int = 0
    read: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rows_written: int = 0
    seconds: float = 0.0

    def add(self, other: SyncStats) -> SyncStats:
        """This sync followed by ``other`` (a first build, then the sync after it)."""
        return SyncStats(
            tables=other.tables,
            records=other.records,
            read=[*self.read, *other.read],
            removed=[*self.removed, *other.removed],
            rows_written=self.rows_written + other.rows_written,
            seconds=self.seconds + other.seconds,
        )

    @property
    def changed(self) -> bool:
        return bool(self.read or self.removed)

    def summary(self) -> str:
        """One line for stderr, e.g. ``indexed 3 table(s), 1,000,000 records in 6.2s``."""
        dropped = f", dropped {len(self.removed)} table(s)" if self.removed else ""
        return (
            f"indexed {len(self.read)} table(s), {self.rows_written:,} records in "
            f"{self.seconds:.1f}s{dropped} ({self.records:,} records in the index)"
        )


def read_columns(path: str) -> pa.Table:
    """The indexed columns of one step table (an empty table when it vanished)."""
    from ..records.tables import IMAGE_RECORD_SCHEMA, read_records

    columns = [*INDEXED_COLUMNS, "created_at"]
    table = read_records(path, columns)
    return IMAGE_RECORD_SCHEMA.empty_table().select(columns) if table is None else table


def insert_rows(conn: sqlite3.Connection, file_id: int, table: pa.Table) -> int:
    """Insert the rows of ``table`` (the indexed columns and ``created_at``) as the rows
    of file ``file_id``; the number of rows.

    Keys and packed details are computed column-wise in Arrow and numpy: a row costs
    Python one tuple of 15 values."""
    table = table.combine_chunks()
    columns = {name: table.column(name).to_pylist() for name in FILTER_COLUMNS}
    keys = [
        _sha_keys(table.column(name)) if key in SHA_KEYS else _uri_keys(columns[name])
        for key, name in KEY_COLUMNS.items()
    ]
    nulls, details = _details(table)
    first = file_id << ROW_BITS
    rows = table.num_rows
    conn.executemany(
        _INSERT,
        zip(range(first, first + rows), *columns.values(), *keys, nulls, details, strict=True),
    )
    return rows


def _sha_keys(column: pa.ChunkedArray) -> list[int | None]:
    """:func:`~bria_dagster.lineage.database.sha_key` of every value, vectorised: the
    first :data:`KEY_HEX` characters, when all lowercase hex, as one integer."""
    import numpy as np
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0 or array.null_count == n:
        return [None] * n
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset : array.offset + n + 1]
    data = np.frombuffer(array.buffers()[2], np.uint8)
    starts = offsets[:-1].astype(np.int64)
    usable = (offsets[1:] - offsets[:-1] >= KEY_HEX) & ~np.asarray(array.is_null())
    positions = np.where(usable, starts, 0)[:, None] + np.arange(KEY_HEX)
    nibbles = _nibble_table()[data[np.minimum(positions, len(data) - 1)]]
    usable &= (nibbles < 16).all(axis=1)
    shifts = np.arange(4 * (KEY_HEX - 1), -4, -4, dtype=np.uint64)
    keys = (nibbles.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64).astype(np.int64)
    return pa.array(keys, pa.int64(), mask=~usable).to_pylist()


def _uri_keys(values: list[str | None]) -> list[int | None]:
    """:func:`~bria_dagster.lineage.database.uri_key` of every value (inlined: a call per
    row is a tenth of a build)."""
    crc32 = zlib.crc32
    return [None if v is None else crc32(v.encode("utf-8", "surrogatepass")) for v in values]


def _details(table: pa.Table) -> tuple[list[int], list[str]]:
    """The ``nulls`` mask and packed ``details`` text of every row (:data:`DETAIL_COLUMNS`
    joined by :data:`DETAIL_SEPARATOR`, a null as an empty text and a bit in the mask)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    created = table.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    values = [created, *(table.column(name) for name in DETAIL_COLUMNS[1:])]
    nulls = np.zeros(table.num_rows, np.int64)
    for bit, column in enumerate(values):
        if column.null_count:
            nulls |= np.asarray(column.is_null()).astype(np.int64) << bit
    texts = [c if pa.types.is_string(c.type) else pc.cast(c, pa.string()) for c in values]
    joined = pc.binary_join_element_wise(
        *texts, DETAIL_SEPARATOR, null_handling="replace", null_replacement=""
    )
    details = joined.to_pylist()
    # A value holding the separator itself: that row as JSON (never seen in practice).
    clash = pc.not_equal(pc.count_substring(joined, DETAIL_SEPARATOR), len(texts) - 1)
    masks = nulls.tolist()
    for i in np.flatnonzero(np.asarray(clash)).tolist():
        row = [created[i].as_py(), *(table.column(n)[i].as_py() for n in DETAIL_COLUMNS[1:])]
        masks[i], details[i] = -1, json.dumps(row)
    return masks, details


@functools.cache
def _nibble_table() -> np.ndarray:
    """Byte -> its value as a lowercase hex digit, 255 for any other byte."""
    import numpy as np

    table = np.full(256, 255, np.uint8)
    for value, char in enumerate(b"0123456789abcdef"):
        table[char] = value
    return table


def _stored(conn: sqlite3.Connection) -> dict[str, tuple[int, int, int]]:
    return {
        path: (file_id, mtime_ns, size)
        for file_id, path, mtime_ns, size in conn.execute(
            "SELECT id, path, mtime_ns, size FROM tables"
        )
    }


def _diff(
    found: dict[str, tuple[int, int]], stored: dict[str, tuple[int, int, int]]
) -> tuple[list[str], list[str]]:
    changed = sorted(p for p, stat in found.items() if stored.get(p, (0, -1, -1))[1:] != stat)
    removed = sorted(p for p in stored if p not in found)
    return changed, removed


def sync_tables(conn: sqlite3.Connection, tables: str) -> SyncStats:
    """Bring the index ``conn`` up to date with the step tables under ``tables``."""
    start = time.perf_counter()
    stats = SyncStats()
    found = scan_tables(tables)
    changed, removed = _diff(found, _stored(conn))
    if changed or removed:
        # One write transaction: a failed or interrupted sync leaves the index as it was.
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = scan_tables(tables)  # another process may have synced while we waited
            stored = _stored(conn)
            changed, removed = _diff(found, stored)
            stats.rows_written = _apply(conn, tables, found, stored, changed, removed)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        stats.read, stats.removed = changed, removed
    stats.tables = len(found)
    stats.records = sum(n for (n,) in conn.execute("SELECT rows FROM tables"))
    stats.seconds = time.perf_counter() - start
    return stats


def build_index(path: str, tables: str) -> SyncStats | None:
    """Build the index file ``path`` from the step tables under ``tables`` when it is
    missing or of another layout (None when it is current).

    A first build loads every table into a temporary file beside ``path`` with no
    journal, creates the secondary indexes once at the end and renames the file into
    place: a crash leaves no half index, and concurrent first queries wait for one build
    (:func:`~bria_dagster.lineage.database.build_lock`).
    """
    if is_current(path):
        return None
    with build_lock(path):
        if is_current(path):  # built by another process while this one waited
            return None
        start = time.perf_counter()
        built = f"{path}.build-{os.getpid()}-{threading.get_ident()}"
        try:
            conn = connect_bulk(built)
            try:
                stats = SyncStats()
                found = scan_tables(tables)
                conn.execute("BEGIN")
                for relative, table in _read_ahead(tables, sorted(found)):
                    mtime_ns, size = found[relative]
                    file_id = add_file(conn, relative, table.num_rows, mtime_ns, size)
                    stats.rows_written += insert_rows(conn, file_id, table)
                finish_bulk(conn)
                conn.execute("COMMIT")
            finally:
                conn.close()
            _flush(built)  # on disk before the rename makes it the index
            install(built, path)
        finally:
            if os.path.exists(built):
                os.remove(built)
    stats.read = sorted(found)
    stats.tables = len(found)
    stats.records = stats.rows_written
    stats.seconds = time.perf_counter() - start
    return stats


def _read_ahead(tables: str, paths: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(path, its indexed columns)`` of each table, the next one read in a thread while
    the caller inserts this one (Parquet decoding and SQLite's steps release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = [reader.submit(read_columns, _join(tables, p)) for p in paths[:1]]
        for i, path in enumerate(paths):
            table = pending.pop().result()
            if i + 1 < len(paths):
                pending.append(reader.submit(read_columns, _join(tables, paths[i + 1])))
            yield path, table


def _flush(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply(
    conn: sqlite3.Connection,
    tables: str,
    found: dict[str, tuple[int, int]],
    stored: dict[str, tuple[int, int, int]],
    changed: list[str],
    removed: list[str],
) -> int:
    """Drop the rows of ``removed`` tables, (re)load the ``changed`` ones; rows written."""
    total = sum(n for (n,) in conn.execute("SELECT rows FROM tables"))
    rewritten = sum(
        n for p, n in conn.execute("SELECT path, rows FROM tables") if p in changed or p in removed
    )
    # Bulk loads are quicker into unindexed tables: index once at the end.
    bulk = len(changed) > 0 and total - rewritten < _BULK_BELOW
    if bulk:
        drop_indexes(conn)
    for path in removed:
        delete_file(conn, stored[path][0])
        conn.execute("DELETE FROM tables WHERE id = ?", (stored[path][0],))
    written = 0
    for path in changed:
        mtime_ns, size = found[path]
        table = read_columns(_join(tables, path))
        if path in stored:
            file_id = stored[path][0]
            delete_file(conn, file_id)
            conn.execute(
                "UPDATE tables SET mtime_ns = ?, size = ?, rows = ? WHERE id = ?",
                (mtime_ns, size, table.num_rows, file_id),
            )
        else:
            file_id = add_file(conn, path, table.num_rows, mtime_ns, size)
        written += insert_rows(conn, file_id, table)
    if bulk:
        create_indexes(conn)
    return written


def add_file(
    conn: sqlite3.Connection, path: str, rows: int, mtime_ns: int = 0, size: int = 0
) -> int:
    """Register a table (``path`` relative to ``tables``); its file id."""
    cursor = conn.execute(
        "INSERT INTO tables (path, mtime_ns, size, rows) VALUES (?, ?, ?, ?)",
        (path, mtime_ns, size, rows),
    )
    return int(cursor.lastrowid or 0)


def _join(tables: str, relative: str) -> str:
    return f"{tables.rstrip('/')}/{relative}"


def delete_file(conn: sqlite3.Connection, file_id: int) -> None:
    first = file_id << ROW_BITS
    conn.execute("DELETE FROM records WHERE id >= ? AND id < ?", (first, first + (1 << ROW_BITS)))


def load_table(conn: sqlite3.Connection, table: pa.Table) -> SyncStats:
    """Index record rows a caller holds (not in a table file), as one table."""
    start = time.perf_counter()
    conn.execute("BEGIN")
    file_id = add_file(conn, HELD_TABLE, table.num_rows)
    rows = insert_rows(conn, file_id, table)
    conn.execute("COMMIT")
    stats = SyncStats(tables=1, records=rows, rows_written=rows)
    stats.seconds = time.perf_counter() - start
    return stats
