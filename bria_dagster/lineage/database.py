"""Where the lineage index lives and how its SQLite file is laid out.

``<base>/tables/_lineage.sqlite`` is a cache derived from the Parquet step tables (the
tables stay the source of truth). For an fsspec URL (``s3://bucket/bria``) it lives
in a local cache folder of the machine that queries, ``$BRIA_DAGSTER_CACHE_DIR`` or
``$XDG_CACHE_HOME/bria-dagster`` (``~/.cache/bria-dagster``) then
``lineage/<sha256 of the URL>.sqlite``: it is never written to the bucket, so several
machines never write one index.

Lookups go through small integer keys instead of long text: the first 60 bits of a
sha256 (prefix searches become integer ranges) or the CRC-32 of a URI. Every query
also compares the text itself, so a shared key never mixes two values up. Only the
columns a query compares are SQL columns (:data:`FILTER_COLUMNS`); the others, shown
but never searched, are packed into one text per row (:data:`DETAIL_COLUMNS`,
:func:`unpack_details`): SQLite then binds 15 values per row instead of 30, which is
most of the time of a first build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator

from ..errors import IndexUnavailableError
from ..records.listing import is_local
from ..records.schema import INDEXED_COLUMNS, LINEAGE_FILTER_COLUMNS, RECORD_COLUMNS

_TYPES = {c.name: c.type for c in RECORD_COLUMNS}

__all__ = [
    "CACHE_DIR_ENV",
    "DETAIL_COLUMNS",
    "FILTER_COLUMNS",
    "INDEX_NAME",
    "KEY_COLUMNS",
    "cache_root",
    "connect",
    "index_path",
    "sha_key",
    "unpack_details",
    "uri_key",
]

INDEX_NAME = "_lineage.sqlite"
CACHE_DIR_ENV = "BRIA_DAGSTER_CACHE_DIR"
SCHEMA_VERSION = 5  # 3: reused_in_run_id and unit_price_usd; 4: noop_reason; 5: details
BUSY_TIMEOUT_S = 60.0
KEY_HEX = 15  # hex characters in a sha key (60 bits: a positive SQLite integer)

KEY_COLUMNS = {
    "image_key": "image_sha256",
    "parent_key": "parent_sha256",
    "source_key": "root_source_sha256",
    "image_uri_key": "image_uri",
    "source_uri_key": "root_source_uri",
}
"""Integer key column -> the record column it keys."""
SHA_KEYS = ("image_key", "parent_key", "source_key")
_INDEXES = (*KEY_COLUMNS, "sku")
ROW_BITS = 32
"""A record's id is (file id << 32) | row position: one file's rows are one id range,
and ids order rows as the Parquet files list them."""

FILTER_COLUMNS = LINEAGE_FILTER_COLUMNS
"""The record columns queries compare in SQL: one SQL text column each."""
DETAIL_COLUMNS = ("created_us", *(c for c in INDEXED_COLUMNS if c not in FILTER_COLUMNS))
"""The columns packed into ``details`` (``created_us``: ``created_at`` in epoch µs)."""
DETAIL_SEPARATOR = "\x1f"
"""Between the packed values (ASCII unit separator). A row with the separator inside a
value is stored as a JSON array instead, with ``nulls`` -1."""
_CONVERT = {"int32": int, "int64": int, "float64": float}
_DETAIL_TYPES = [
    int if name == "created_us" else _CONVERT.get(_TYPES[name], str) for name in DETAIL_COLUMNS
]

_HEX = re.compile(r"[0-9a-f]+")


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
    if is_local(base):
        return os.path.join(os.fspath(base).removeprefix("file://"), "tables", INDEX_NAME)
    url = os.fspath(base).rstrip("/")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    return os.path.join(cache_root(cache_dir), "lineage", f"{digest}.sqlite")


def sha_key(sha: str | None) -> int | None:
    """The first 60 bits of a hex sha256 (None for anything else)."""
    head = sha[:KEY_HEX] if sha else ""
    return int(head, 16) if len(head) == KEY_HEX and _HEX.fullmatch(head) else None


def uri_key(uri: str | None) -> int | None:
    return None if uri is None else zlib.crc32(uri.encode("utf-8", "surrogatepass"))


_TABLES_DDL = (
    "CREATE TABLE IF NOT EXISTS tables ("
    "id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, mtime_ns INTEGER NOT NULL, "
    "size INTEGER NOT NULL, rows INTEGER NOT NULL)"
)


_RECORDS_DDL = (
    "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, "
    + "".join(f"{name} TEXT, " for name in FILTER_COLUMNS)
    + "".join(f"{key} INTEGER, " for key in KEY_COLUMNS)
    + "nulls INTEGER NOT NULL, details TEXT NOT NULL)"
)


def unpack_details(nulls: int, details: str) -> dict[str, object]:
    """The :data:`DETAIL_COLUMNS` of one row from its ``nulls`` bit mask (bit i: the i-th
    column is null; -1: ``details`` is a JSON array) and its packed ``details`` text."""
    if nulls < 0:
        return dict(zip(DETAIL_COLUMNS, json.loads(details), strict=True))
    values = details.split(DETAIL_SEPARATOR)
    return {
        name: None if nulls >> i & 1 else convert(value)
        for i, (name, convert, value) in enumerate(
            zip(DETAIL_COLUMNS, _DETAIL_TYPES, values, strict=True)
        )
    }


def create_schema(conn: sqlite3.Connection, *, indexes: bool = True) -> None:
    """The tables of an empty index (``indexes=False``: without the secondary indexes,
    for a bulk load that creates them at the end)."""
    conn.execute(_TABLES_DDL)
    conn.execute(_RECORDS_DDL)
    if indexes:
        create_indexes(conn)


def create_indexes(conn: sqlite3.Connection) -> None:
    for name in _INDEXES:
        conn.execute(f"CREATE INDEX IF NOT EXISTS records_{name} ON records({name})")


def drop_indexes(conn: sqlite3.Connection) -> None:
    for name in _INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS records_{name}")


def connect(path: str) -> sqlite3.Connection:
    """The index at ``path`` (``:memory:`` for one that lives with this process), created
    or, when written by another layout version, dropped and created again."""
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
                    create_schema(conn)
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
        raise _unavailable(path, exc) from exc
    return conn


def _unavailable(path: str, exc: Exception) -> IndexUnavailableError:
    return IndexUnavailableError(
        f"cannot use the lineage index {path}: {exc}; "
        "run with --no-index, or delete the file so it is rebuilt"
    )


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (readers never wait for a sync); needs a moment without other users,
    so on a busy index it is left to a later run (rollback journal works too, only slower)."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    with contextlib.suppress(sqlite3.OperationalError):
        conn.execute("PRAGMA journal_mode = WAL")


def is_current(path: str) -> bool:
    """Whether ``path`` holds an index of this layout, or something that is not ours to
    replace (a file SQLite cannot read: :func:`connect` reports it)."""
    if not os.path.exists(path):
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as conn:
            return bool(conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)
    except sqlite3.Error:
        return True


def connect_bulk(path: str) -> sqlite3.Connection:
    """A new index file for a first build: no journal and no syncs (a crash leaves only
    this temporary file, never a half index at the real path), 16 KiB pages (a quarter
    of the reads and writes), the schema without its secondary indexes
    (:func:`finish_bulk` creates them; with SQLite's sorter threads off, the default,
    which sorts them in half the time with them on)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA page_size = 16384")
        create_schema(conn, indexes=False)
    except sqlite3.Error as exc:
        raise _unavailable(path, exc) from exc
    return conn


def finish_bulk(conn: sqlite3.Connection) -> None:
    """Index the loaded rows and stamp the layout version (SQLite's default small cache
    sorts the index entries fastest: it merges short sorted runs)."""
    create_indexes(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def build_lock(path: str) -> Iterator[None]:
    """Held while the index at ``path`` is (re)built, so concurrent first queries build it
    once (``<path>.lock``; an advisory lock where the platform has ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: two first builds may both run, each whole
        yield
        return
    try:
        fh = open(f"{path}.lock", "a+b")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise _unavailable(path, exc) from exc
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def install(built: str, path: str) -> None:
    """Move the finished index ``built`` to ``path`` in one rename; journal files of an
    index that was there before go first (they belong to the old file)."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    os.replace(built, path)
