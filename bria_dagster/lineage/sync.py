"""Bringing the lineage index up to date with the Parquet step tables.

:func:`sync_tables` re-reads only the tables whose size or stamp changed (mtime
locally; ETag and last-modified time in an object store) and drops vanished ones, all
in one transaction; when nothing changed only the files are listed. Concurrent syncs on
one machine serialise on SQLite's write lock: each re-lists inside its write
transaction, so the second finds the work done. Reading a table is the only step that
imports pyarrow (through :mod:`bria_dagster.records.tables`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..records.listing import scan_tables
from ..records.schema import INDEXED_COLUMNS
from .database import (
    KEY_COLUMNS,
    ROW_BITS,
    SHA_KEYS,
    create_indexes,
    drop_indexes,
    sha_key,
    uri_key,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["HELD_TABLE", "SyncStats", "load_table", "read_columns", "sync_tables"]

HELD_TABLE = "<records>"
"""The ``tables`` entry of rows a caller holds (not read from a file)."""
_BULK_BELOW = 100_000  # rows kept from before: fewer, and indexes are rebuilt at the end
_INSERT = "INSERT INTO records (id, created_us, {names}) VALUES ({marks})".format(
    names=", ".join((*INDEXED_COLUMNS, *KEY_COLUMNS)),
    marks=", ".join("?" * (len(INDEXED_COLUMNS) + len(KEY_COLUMNS) + 2)),
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
    of file ``file_id``; the number of rows."""
    import pyarrow as pa

    created = table.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    columns = {name: table.column(name).to_pylist() for name in INDEXED_COLUMNS}
    keys = [
        [(sha_key if key in SHA_KEYS else uri_key)(v) for v in columns[name]]
        for key, name in KEY_COLUMNS.items()
    ]
    first = file_id << ROW_BITS
    rows = table.num_rows
    conn.executemany(
        _INSERT,
        zip(range(first, first + rows), created.to_pylist(), *columns.values(), *keys, strict=True),
    )
    return rows


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
