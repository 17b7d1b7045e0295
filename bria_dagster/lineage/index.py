"""A persistent SQLite lineage index: the CLI's fast path over the record tables.

``<base>/tables/_lineage.sqlite`` is a cache derived from the Parquet step tables
(the tables stay the source of truth). :func:`sync` brings it up to date by
re-reading only the tables whose size or mtime changed, and :class:`IndexedLineage`
answers ``trace`` and ``derived`` with the same semantics and rows as
:mod:`bria_dagster.lineage.frame`, as plain dicts, without importing pandas or pyarrow
when the index is current (so a query over a million records answers in well
under a second, interpreter start included).

Where the index lives: for a local base, beside the tables; for an fsspec URL
(``s3://bucket/bria``) in a local cache folder of the machine that queries,
``$BRIA_DAGSTER_CACHE_DIR`` or ``$XDG_CACHE_HOME/bria-dagster`` (``~/.cache/bria-dagster``)
then ``lineage/<sha256 of the URL>.sqlite``: it is never written to the bucket, so
several machines never write one index. A remote sync lists the tables (ETag,
last-modified and size) and downloads only the new or changed ones. Concurrent syncs
on one machine serialise on SQLite's write lock: each re-lists inside its write
transaction, so the second finds the work done.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import posixpath
import re
import sqlite3
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ..errors import BriaError, StorageAccessError, storage_access
from ..steps.registry import step_rank

__all__ = [
    "CACHE_DIR_ENV",
    "DERIVED_COLUMNS",
    "INDEX_NAME",
    "MIN_PREFIX",
    "STEP_ORDER",
    "TRACE_COLUMNS",
    "IndexUnavailableError",
    "IndexedLineage",
    "LineageNotFoundError",
    "QueryResult",
    "RecordTableError",
    "SyncStats",
    "cache_root",
    "index_path",
    "is_local_base",
    "open_index",
    "sync",
    "write_csv",
]

INDEX_NAME = "_lineage.sqlite"
CACHE_DIR_ENV = "BRIA_DAGSTER_CACHE_DIR"
SCHEMA_VERSION = 4  # 3: reused_in_run_id and unit_price_usd; 4: noop_reason
BUSY_TIMEOUT_S = 60.0
MIN_PREFIX = 8
STEP_ORDER = step_rank()
OK, FAILED, REUSED = "ok", "failed", "reused"

TRACE_COLUMNS = (
    "hop",
    "step",
    "sku",
    "image_sha256",
    "image_uri",
    "parent_sha256",
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
    "error_class",
    "error_message",
)
# The record columns the index keeps (created_at is kept as epoch microseconds).
STORED_COLUMNS = (
    "partition",
    "sku",
    "step",
    "variant",
    "status",
    "error_class",
    "error_message",
    "image_uri",
    "image_sha256",
    "parent_sha256",
    "root_source_uri",
    "root_source_sha256",
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
    "asset_key",
)
# Lookups go through small integer keys instead of long text: the first 60 bits of a
# sha256 (prefix searches become integer ranges) or the CRC-32 of a URI. Every query
# also compares the text itself, so a shared key never mixes two values up.
KEY_COLUMNS = {
    "image_key": "image_sha256",
    "parent_key": "parent_sha256",
    "source_key": "root_source_sha256",
    "image_uri_key": "image_uri",
    "source_uri_key": "root_source_uri",
}
INDEXED_COLUMNS = (*KEY_COLUMNS, "sku")
_KEY_HEX = 15  # hex characters in a sha key (60 bits: a positive SQLite integer)
_SHA_KEYS = ("image_key", "parent_key", "source_key")
# A record's id is (file id << 32) | row position: one file's rows are one id range,
# and ids order rows as the Parquet files list them.
_ROW_BITS = 32
_SELECT = ", ".join(("id", "created_us", *STORED_COLUMNS))

_HEX = re.compile(r"[0-9a-f]+")
_IMAGE = "image_key = ? AND image_sha256 = ? AND status IN (?, ?)"
_SOURCE = "source_key = ? AND root_source_sha256 = ?"
_SHA = re.compile(r"[0-9a-f]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LineageNotFoundError(BriaError, LookupError):
    """An image, sku or source named in a lineage query is not in the record tables."""


class RecordTableError(BriaError):
    """A record table under ``<base>/tables`` could not be read with the ImageRecord schema."""


class IndexUnavailableError(BriaError):
    """The SQLite index cannot be opened or written here (read-only store, corrupt file)."""


# --------------------------------------------------------------------------- files


def is_local_base(base: str | os.PathLike[str]) -> bool:
    """True for a local folder (or ``file://`` URL); fsspec URLs such as ``s3://`` are not."""
    text = os.fspath(base)
    return "://" not in text or text.startswith("file://")


def _local(base: str | os.PathLike[str]) -> str:
    return os.fspath(base).removeprefix("file://")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The local cache folder: ``cache_dir``, else ``$BRIA_DAGSTER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/bria-dagster`` (``~/.cache/bria-dagster``)."""
    if cache_dir:
        return os.fspath(cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return os.environ[CACHE_DIR_ENV]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "bria-dagster")


def index_path(
    base: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """Where the index of ``base`` lives: ``<base>/tables/_lineage.sqlite`` for a local
    base; ``<cache root>/lineage/<sha256 of the URL>.sqlite`` for an fsspec URL."""
    if is_local_base(base):
        return os.path.join(_local(base), "tables", INDEX_NAME)
    url = os.fspath(base).rstrip("/")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    return os.path.join(cache_root(cache_dir), "lineage", f"{digest}.sqlite")


def _scan(tables: str) -> dict[str, tuple[int, int]]:
    """``{"<asset>/<partition>.parquet": (stamp, size)}`` of the step tables; the stamp
    is the mtime in ns locally, a 60-bit key of ETag and last-modified time remotely."""
    if not is_local_base(tables):
        return _scan_remote(tables)
    found: dict[str, tuple[int, int]] = {}
    try:
        assets = list(os.scandir(tables))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for asset in assets:
        if not asset.is_dir():
            continue
        for entry in os.scandir(asset.path):
            # Hidden or underscore names are temporaries and caches, never step tables.
            if not entry.name.endswith(".parquet") or entry.name.startswith((".", "_")):
                continue
            if not entry.is_file():
                continue
            stat = entry.stat()
            found[f"{asset.name}/{entry.name}"] = (stat.st_mtime_ns, stat.st_size)
    return found


def _scan_remote(tables: str) -> dict[str, tuple[int, int]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(tables)
    root = root.rstrip("/")
    with storage_access(tables, "list record tables"):
        fs.invalidate_cache()  # other machines write here: never trust an old listing
        # exists() first: s3fs's find() answers {} where access is refused.
        entries = fs.find(root, maxdepth=2, detail=True) if fs.exists(root) else {}
    found: dict[str, tuple[int, int]] = {}
    for path, info in entries.items():
        relative = path.removeprefix(root).lstrip("/")
        parts = relative.split("/")
        if len(parts) != 2 or info.get("type") != "file":
            continue
        if not parts[1].endswith(".parquet") or parts[1].startswith((".", "_")):
            continue
        found[relative] = (_remote_stamp(info), int(info.get("size") or 0))
    return found


def _remote_stamp(info: dict[str, Any]) -> int:
    """What changes when an object is rewritten: its ETag and last-modified time (s3fs),
    or whatever of mtime / created / md5 the filesystem reports."""
    keys = ("ETag", "etag", "md5", "LastModified", "last_modified", "mtime", "updated", "created")
    text = "|".join(str(info.get(key)) for key in keys)
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_HEX], 16)


def _read_table(path: str) -> list[list[Any]]:
    """The stored columns of one Parquet table (``created_us`` first), as Python lists."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from ..records.schema import IMAGE_RECORD_SCHEMA

    try:
        if is_local_base(path):
            dataset = ds.dataset(path, schema=IMAGE_RECORD_SCHEMA, format="parquet")
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(path)
            with storage_access(path, "read record table"):
                dataset = ds.dataset(
                    root, schema=IMAGE_RECORD_SCHEMA, format="parquet", filesystem=fs
                )
        with storage_access(path, "read record table"):
            table = dataset.to_table(columns=[*STORED_COLUMNS, "created_at"])
    except StorageAccessError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise RecordTableError(
            f"cannot read record table {path} with the ImageRecord schema: {exc}. "
            "Remove or rewrite it (only pipeline-written Parquet belongs under tables/)."
        ) from exc
    created = table.column("created_at").cast(pa.int64()).to_pylist()
    columns = {name: table.column(name).to_pylist() for name in STORED_COLUMNS}
    keys = [
        [(_sha_key if key in _SHA_KEYS else _uri_key)(v) for v in columns[name]]
        for key, name in KEY_COLUMNS.items()
    ]
    return [created, *columns.values(), *keys]


def _sha_key(sha: str | None) -> int | None:
    """The first 60 bits of a hex sha256 (None for anything else)."""
    head = sha[:_KEY_HEX] if sha else ""
    return int(head, 16) if len(head) == _KEY_HEX and _HEX.fullmatch(head) else None


def _uri_key(uri: str | None) -> int | None:
    return None if uri is None else zlib.crc32(uri.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- sync


@dataclass
class SyncStats:
    """What :func:`sync` did: tables seen, tables (re)read or dropped, rows, seconds."""

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


_TABLES_DDL = (
    "CREATE TABLE IF NOT EXISTS tables ("
    "id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, mtime_ns INTEGER NOT NULL, "
    "size INTEGER NOT NULL, rows INTEGER NOT NULL)"
)


def _records_ddl() -> str:
    types = {"seed": "INTEGER", "cost_usd": "REAL", "unit_price_usd": "REAL"}
    columns = ", ".join(f"{name} {types.get(name, 'TEXT')}" for name in STORED_COLUMNS)
    columns += "".join(f", {key} INTEGER" for key in KEY_COLUMNS)
    return (
        "CREATE TABLE IF NOT EXISTS records "
        f"(id INTEGER PRIMARY KEY, created_us INTEGER, {columns})"
    )


def _create_indexes(conn: sqlite3.Connection) -> None:
    for name in INDEXED_COLUMNS:
        conn.execute(f"CREATE INDEX IF NOT EXISTS records_{name} ON records({name})")


def _drop_indexes(conn: sqlite3.Connection) -> None:
    for name in INDEXED_COLUMNS:
        conn.execute(f"DROP INDEX IF EXISTS records_{name}")


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    conn.execute("DROP TABLE IF EXISTS records")
                    conn.execute("DROP TABLE IF EXISTS tables")
                    conn.execute(_TABLES_DDL)
                    conn.execute(_records_ddl())
                    _create_indexes(conn)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if version:  # an older layout was dropped: give its pages back to the disk
                with contextlib.suppress(sqlite3.OperationalError):
                    conn.execute("VACUUM")
        if path != ":memory:":
            _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        raise IndexUnavailableError(
            f"cannot use the lineage index {path}: {exc}; "
            "run with --no-index, or delete the file so it is rebuilt"
        ) from exc
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (readers never wait for a sync); needs a moment without other users,
    so on a busy index it is left to a later run (rollback journal works too, only slower)."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    with contextlib.suppress(sqlite3.OperationalError):
        conn.execute("PRAGMA journal_mode = WAL")


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


def _sync(conn: sqlite3.Connection, tables: str) -> SyncStats:
    start = time.perf_counter()
    stats = SyncStats()
    found = _scan(tables)
    changed, removed = _diff(found, _stored(conn))
    if changed or removed:
        # One write transaction: a failed or interrupted sync leaves the index as it was.
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _scan(tables)  # another process may have synced while we waited
            stored = _stored(conn)
            changed, removed = _diff(found, stored)
            total = sum(n for (n,) in conn.execute("SELECT rows FROM tables"))
            rewritten = sum(
                n
                for p, n in conn.execute("SELECT path, rows FROM tables")
                if p in changed or p in removed
            )
            # Bulk loads are quicker into unindexed tables: index once at the end.
            bulk = len(changed) > 0 and total - rewritten < 100_000
            if bulk:
                _drop_indexes(conn)
            for path in removed:
                _delete_file(conn, stored[path][0])
                conn.execute("DELETE FROM tables WHERE id = ?", (stored[path][0],))
            for path in changed:
                mtime_ns, size = found[path]
                columns = _read_table(_join(tables, path))
                rows = len(columns[0])
                if path in stored:
                    file_id = stored[path][0]
                    _delete_file(conn, file_id)
                    conn.execute(
                        "UPDATE tables SET mtime_ns = ?, size = ?, rows = ? WHERE id = ?",
                        (mtime_ns, size, rows, file_id),
                    )
                else:
                    file_id = conn.execute(
                        "INSERT INTO tables (path, mtime_ns, size, rows) VALUES (?, ?, ?, ?)",
                        (path, mtime_ns, size, rows),
                    ).lastrowid
                first = file_id << _ROW_BITS
                marks = ", ".join("?" * (len(STORED_COLUMNS) + len(KEY_COLUMNS) + 2))
                names = ", ".join((*STORED_COLUMNS, *KEY_COLUMNS))
                conn.executemany(
                    f"INSERT INTO records (id, created_us, {names}) VALUES ({marks})",
                    zip(range(first, first + rows), *columns, strict=True),
                )
                stats.rows_written += rows
            if bulk:
                _create_indexes(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        stats.read, stats.removed = changed, removed
    stats.tables = len(found)
    stats.records = sum(n for (n,) in conn.execute("SELECT rows FROM tables"))
    stats.seconds = time.perf_counter() - start
    return stats


def _join(tables: str, relative: str) -> str:
    return os.path.join(tables, relative) if is_local_base(tables) else f"{tables}/{relative}"


def _delete_file(conn: sqlite3.Connection, file_id: int) -> None:
    first = file_id << _ROW_BITS
    conn.execute("DELETE FROM records WHERE id >= ? AND id < ?", (first, first + (1 << _ROW_BITS)))


def sync(
    base: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> SyncStats:
    """Bring the index of ``base`` (:func:`index_path`) up to date with the Parquet tables.

    New or changed tables (size or mtime; ETag for an object store) are re-read,
    vanished ones dropped, all in one transaction; when nothing changed only the
    files are stat-ed (listed).
    """
    index = open_index(base, cache_dir=cache_dir)
    try:
        return index.stats
    finally:
        index.close()


def open_index(
    base: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> IndexedLineage:
    """The synced index of ``base``, ready for queries (close it when done).

    A local store without a ``tables`` folder gets an empty in-memory index (nothing
    to cache). An fsspec URL's index lives in the local cache folder (:func:`cache_root`,
    or ``cache_dir``), never under the URL; a ``memory://`` one only in memory.
    """
    if is_local_base(base):
        tables = os.path.join(_local(base), "tables")
        path = index_path(base) if os.path.isdir(tables) else ":memory:"
    elif os.fspath(base).startswith("memory://"):  # lives and dies with this process
        tables = f"{os.fspath(base).rstrip('/')}/tables"
        path = ":memory:"
    else:
        tables = f"{os.fspath(base).rstrip('/')}/tables"
        path = index_path(base, cache_dir)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise IndexUnavailableError(
                f"cannot create the lineage cache folder {os.path.dirname(path)}: {exc}; "
                f"set --cache-dir or {CACHE_DIR_ENV}, or run with --no-index"
            ) from exc
    conn = _connect(path)
    try:
        stats = _sync(conn, tables)
    except sqlite3.Error as exc:
        conn.close()
        raise IndexUnavailableError(
            f"cannot update the lineage index {path}: {exc}; "
            "run with --no-index, or delete the file so it is rebuilt"
        ) from exc
    except BaseException:
        conn.close()
        raise
    source = f"{os.fspath(base).rstrip('/')}/tables"
    return IndexedLineage(conn, source=source, stats=stats)


# --------------------------------------------------------------------------- queries


@dataclass
class QueryResult:
    """Rows of a query as plain dicts (JSON-friendly), in output order, with their totals."""

    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    total_cost_usd: float
    source_uri: str | None = None


def looks_like_sha(text: str) -> bool:
    """Lowercase hex of at most 64 characters: a sha256 or a prefix of one."""
    return bool(_HEX.fullmatch(text)) and len(text) <= 64


class ImageResolver:
    """Turns what a user typed (sha256, prefix, stored path or URI, file) into a full sha256.

    Shared by the pandas :class:`~bria_dagster.lineage.frame.LineageIndex` and the SQLite
    :class:`IndexedLineage`, which supply the lookups: ``_is_known``,
    ``_prefix_matches`` and ``_sha_for_uri`` (and ``source`` / ``__len__`` for messages).
    """

    source: str

    def __len__(self) -> int:
        raise NotImplementedError

    def _is_known(self, sha: str) -> bool:
        raise NotImplementedError

    def _prefix_matches(self, prefix: str) -> set[str]:
        """Output or source shas (ok/reused rows) starting with ``prefix``."""
        raise NotImplementedError

    def _sha_for_uri(self, text: str) -> str | None:
        """The sha of the image or source recorded under URI ``text``."""
        raise NotImplementedError

    def _by_prefix(self, prefix: str) -> str | None:
        if len(prefix) == 64:
            return prefix if self._is_known(prefix) else None
        matches = sorted(self._prefix_matches(prefix))
        if len(matches) > 1:
            shown = ", ".join(m[:16] for m in matches[:5])
            raise LineageNotFoundError(
                f"sha256 prefix {prefix!r} is ambiguous in {self.source}: it matches "
                f"{len(matches)} images ({shown}...); give more characters"
            )
        return matches[0] if matches else None

    def resolve_image(self, image: str) -> str:
        """The full sha256 named by ``image``: a sha256, a unique prefix, a stored path or URI."""
        text = str(image).strip()
        low = text.lower()
        if looks_like_sha(low):
            if len(low) < MIN_PREFIX:
                raise LineageNotFoundError(
                    f"sha256 prefix {text!r} is too short: "
                    f"give at least {MIN_PREFIX} hex characters"
                )
            found = self._by_prefix(low)
            if found:
                return found
            raise self._not_found(text, "as a sha256 or sha256 prefix")
        found = self._sha_from_location(text)
        if found:
            return found
        raise self._not_found(text, "as an image path or URI (file name, image_uri, file bytes)")

    def _sha_from_location(self, text: str) -> str | None:
        # Stored images are named <sha256>.<ext>: the name alone identifies them.
        stem = posixpath.basename(text.replace("\\", "/").rstrip("/")).split(".")[0].lower()
        if _SHA.fullmatch(stem) and self._is_known(stem):
            return stem
        found = self._sha_for_uri(text)
        if found:
            return found
        digest = _hash_file(text)
        if digest and self._is_known(digest):
            return digest
        return None

    def _source_sha(self, source: str) -> str:
        """The sha ``derived`` starts from: a source or image sha (prefix), path or file."""
        low = source.lower()
        if looks_like_sha(low):
            if len(low) < MIN_PREFIX:
                raise LineageNotFoundError(
                    f"{source!r} is neither a sku in {self.source} nor a usable sha256 prefix "
                    f"(give at least {MIN_PREFIX} hex characters)"
                )
            sha = self._by_prefix(low)
        else:
            sha = self._sha_from_location(source)
        if sha is None:
            raise LineageNotFoundError(
                f"no sku, source sha256, image sha256 or source URI matches {source!r} in "
                f"{len(self)} record rows from {self.source}; check the spelling or --base"
            )
        return sha

    def _not_found(self, what: str, how: str) -> LineageNotFoundError:
        return LineageNotFoundError(
            f"no record of {what!r} ({how}) in {len(self)} record rows from {self.source}; "
            "check the image or base location (--base), or run the pipeline for it first"
        )


class IndexedLineage(ImageResolver):
    """trace/derived over the SQLite index, row for row as :class:`lineage.LineageIndex`."""

    def __init__(self, conn: sqlite3.Connection, *, source: str, stats: SyncStats) -> None:
        self.conn = conn
        self.source = source
        self.stats = stats
        # One read transaction: every lookup of a query sees the same snapshot, even
        # while another process syncs (WAL readers do not wait for writers).
        conn.execute("BEGIN")
        self._paths = {i: p for i, p in conn.execute("SELECT id, path FROM tables")}

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self.conn.close()

    def __enter__(self) -> IndexedLineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.stats.records

    # ----------------------------------------------------------------- rows

    def _order(self, row: dict[str, Any]) -> tuple[str, int]:
        """Where ``row`` sits in the pandas path's frame: file path, then position."""
        return self._paths[row["id"] >> _ROW_BITS], row["id"] & ((1 << _ROW_BITS) - 1)

    def _select(
        self, where: str, params: Sequence[Any], *, with_: str = ""
    ) -> list[dict[str, Any]]:
        sql = f"{with_} SELECT {_SELECT} FROM records WHERE {where}"
        cursor = self.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor]
        rows.sort(key=self._order)
        return rows

    def _image_rows(self, sha: str) -> list[dict[str, Any]]:
        """The ok/reused rows of image ``sha``: rows of runs that made it first, then rows
        of runs that reused it; newest first within each (ties: table order)."""
        rows = self._select(_IMAGE, (_sha_key(sha), sha, OK, REUSED))
        # A missing time sorts first, as NaT does in the pandas path.
        rows.sort(
            key=lambda r: (
                r["status"] == REUSED,
                r["created_us"] is not None,
                -(r["created_us"] or 0),
            )
        )
        return rows

    def _exists(self, where: str, params: Sequence[Any]) -> bool:
        sql = f"SELECT 1 FROM records WHERE {where} LIMIT 1"
        return self.conn.execute(sql, params).fetchone() is not None

    def _is_root(self, sha: str) -> bool:
        return self._exists(_SOURCE, (_sha_key(sha), sha))

    def _is_known(self, sha: str) -> bool:
        return self._exists(_IMAGE, (_sha_key(sha), sha, OK, REUSED)) or self._is_root(sha)

    # ----------------------------------------------------------------- resolving names

    def _prefix_matches(self, prefix: str) -> set[str]:
        head = prefix[:_KEY_HEX]
        low = int(head.ljust(_KEY_HEX, "0"), 16)
        high = int(head.ljust(_KEY_HEX, "f"), 16)
        found: set[str] = set()
        for key, extra in (
            ("image_key", f" AND status IN ('{OK}', '{REUSED}')"),
            ("source_key", ""),
        ):
            column = KEY_COLUMNS[key]
            sql = (
                f"SELECT DISTINCT {column} FROM records WHERE {key} BETWEEN ? AND ? "
                f"AND substr({column}, 1, ?) = ?{extra}"
            )
            params = (low, high, len(prefix), prefix)
            found.update(v for (v,) in self.conn.execute(sql, params))
        return found

    def _sha_for_uri(self, text: str) -> str | None:
        for key, sha_column in (
            ("image_uri_key", "image_sha256"),
            ("source_uri_key", "root_source_sha256"),
        ):
            where = f"{key} = ? AND {KEY_COLUMNS[key]} = ? AND {sha_column} IS NOT NULL"
            hits = self._select(where, (_uri_key(text), text))
            if hits:
                return str(hits[0][sha_column])
        return None

    # ----------------------------------------------------------------- queries

    def trace(self, image: str, *, all_records: bool = False) -> QueryResult:
        """The chain from ``image`` back to its catalog source (see ``LineageIndex.trace``)."""
        sha = self.resolve_image(image)
        chain: list[dict[str, Any]] = []
        # A no-op row holds its parent's image: traced itself, its hop first, then the
        # image's maker; reached as a parent, only the maker (as LineageIndex.trace does).
        seen: set[tuple[str, bool]] = set()
        current: str | None = sha
        through_noop = False
        while current and (current, through_noop) not in seen:
            image = current
            rows = self._image_rows(image)
            if seen:  # past hop 0: the image's maker, never a no-op that kept it
                rows = [r for r in rows if r["parent_sha256"] != image]
            if not rows:
                break
            rows.sort(key=lambda r: r["parent_sha256"] != image)  # stable: no-op rows first
            seen.add((image, through_noop))
            through_noop = rows[0]["parent_sha256"] == image
            if all_records:
                rows = [r for r in rows if (r["parent_sha256"] == image) == through_noop]
            for row in rows if all_records else rows[:1]:
                chain.append({**row, "hop": len(seen) - 1})
            current = rows[0]["parent_sha256"]
        # Without a chain the image is itself a catalog source.
        last = chain[-1] if chain else self._select(_SOURCE, (_sha_key(sha), sha))[0]
        out = [_trace_row(row) for row in chain]
        # The catalog step may have recorded the source itself (step "source"); otherwise
        # the chain ends with a synthetic row made from the root_source_* columns.
        if not (chain and chain[-1]["step"] == "source"):
            source = dict.fromkeys(TRACE_COLUMNS)
            source.update(
                hop=chain[-1]["hop"] + 1 if chain else 0,
                step="source",
                sku=last["sku"],
                image_sha256=last["root_source_sha256"],
                image_uri=last["root_source_uri"],
                cost_usd=0.0,
            )
            out.append(source)
        return QueryResult(out, TRACE_COLUMNS, _total(out), last["root_source_uri"])

    def derived(self, source: str, *, include_failed: bool = False) -> QueryResult:
        """Every image made from ``source`` (see ``LineageIndex.derived``)."""
        rows = [r for r in self._derived_rows(str(source).strip()) if r["step"] != "source"]
        out = []
        for row in rows:
            failed = row["status"] == FAILED
            if failed and not include_failed:
                continue
            item = {name: row.get(name) for name in DERIVED_COLUMNS}
            item["failed"] = failed
            item["created_at"] = _iso(row["created_us"])
            item["_key"] = (
                STEP_ORDER.get(row["step"], len(STEP_ORDER)),
                *_none_last(row["sku"]),
                *_none_last(row["variant"]),
                *_none_last(row["created_us"]),
            )
            out.append(item)
        out.sort(key=lambda item: item.pop("_key"))
        return QueryResult(out, DERIVED_COLUMNS, _total(out))

    def _derived_rows(self, source: str) -> list[dict[str, Any]]:
        rows = self._select("sku = ?", (source,))
        if rows:
            return rows
        if not looks_like_sha(source.lower()):
            rows = self._select(
                "source_uri_key = ? AND root_source_uri = ?", (_uri_key(source), source)
            )
            if rows:
                return rows
        sha = self._source_sha(source)
        if self._is_root(sha):
            return self._select(_SOURCE, (_sha_key(sha), sha))
        # Rows whose parent chain leads to ``sha``: every image reachable through parent links.
        reached = (
            "WITH RECURSIVE reached(sha, k) AS (SELECT ?, ? UNION "
            "SELECT r.image_sha256, r.image_key FROM records r JOIN reached "
            "ON r.parent_key = reached.k AND r.parent_sha256 = reached.sha "
            "WHERE r.image_sha256 IS NOT NULL)"
        )
        return self._select(
            "parent_key IN (SELECT k FROM reached) AND parent_sha256 IN (SELECT sha FROM reached)",
            (sha, _sha_key(sha)),
            with_=reached,
        )


def _trace_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in TRACE_COLUMNS}
    out["created_at"] = _iso(row["created_us"])
    out["cost_usd"] = 0.0 if row["cost_usd"] is None else float(row["cost_usd"])
    return out


def _none_last(value: Any) -> tuple[bool, Any]:
    return (value is None, "" if value is None else value)


def _total(rows: Iterable[dict[str, Any]]) -> float:
    return float(sum(r["cost_usd"] for r in rows if r["cost_usd"] is not None))


def _iso(micros: int | None) -> str | None:
    """ISO text of an epoch-microsecond time, as ``pd.Timestamp.isoformat`` writes it (UTC)."""
    if micros is None:
        return None
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


def _hash_file(location: str) -> str | None:
    """sha256 of a local file's bytes, or None when ``location`` is not a readable local file."""
    path = location.removeprefix("file://")
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


# --------------------------------------------------------------------------- output


def write_csv(result: QueryResult, out: TextIO) -> None:
    """``result`` as CSV, byte for byte as ``DataFrame.to_csv(index=False)`` writes it."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    times = _csv_times([row.get("created_at") for row in result.rows])
    for row, time_text in zip(result.rows, times, strict=True):
        cells = [_csv_cell(row[name]) for name in result.columns]
        if "created_at" in result.columns:
            cells[result.columns.index("created_at")] = time_text
        writer.writerow(cells)


def _csv_times(values: list[str | None]) -> list[str]:
    """Times as pandas writes a datetime column: ``str(Timestamp)``, with one sub-second
    precision for the whole column (none, milliseconds or microseconds, as needed)."""
    fractions = [v[20:26] if v and v[19] == "." else "000000" for v in values]
    if any(f[3:] != "000" for f in fractions):
        digits = 6
    elif any(f != "000000" for f in fractions):
        digits = 3
    else:
        digits = 0
    return [
        f"{v[:10]} {v[11:19]}{'.' + f[:digits] if digits else ''}{v[-6:]}" if v else ""
        for v, f in zip(values, fractions, strict=True)
    ]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dump_json(result: QueryResult, out: TextIO) -> None:
    """``result`` as a JSON list of objects (as ``lineage.plain_rows`` gives them)."""
    json.dump(result.rows, out, indent=2)
    out.write("\n")
