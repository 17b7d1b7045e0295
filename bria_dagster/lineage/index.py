"""The one lineage query API: ``trace`` and ``derived`` over a SQLite index of the record tables.

The step tables are the lineage (every row names its parent image, endpoint,
parameters, run and cost); the index is derived from them and answers in
milliseconds over ten million records. :func:`open_index` opens the index of a base
(``<base>/tables/_lineage.sqlite`` for a local base, a local cache file for an fsspec
URL: :mod:`bria_dagster.lineage.database`), brought up to date first
(:mod:`bria_dagster.lineage.sync`); :meth:`LineageIndex.of_records` indexes rows a
caller holds, in memory. Answers are plain dicts (:class:`QueryResult`); without a
table to re-read, nothing here imports pandas or pyarrow, so the CLI answers a query
over ten million records in well under a second, interpreter start included.
:mod:`bria_dagster.lineage.frame` gives the same answers as pandas DataFrames.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import IndexUnavailableError
from ..records.listing import is_local, tables_location
from ..records.schema import (
    DERIVED_COLUMNS,
    FAILED,
    OK,
    REUSED,
    TRACE_COLUMNS,
)
from .database import (
    CACHE_DIR_ENV,
    FILTER_COLUMNS,
    KEY_COLUMNS,
    KEY_HEX,
    ROW_BITS,
    connect,
    index_path,
    sha_key,
    unpack_details,
    uri_key,
)
from .resolve import ImageResolver, looks_like_sha
from .sync import SyncStats, build_index, load_table, sync_tables

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LineageIndex", "QueryResult", "open_index", "sync"]

_SELECT = ", ".join(("id", *FILTER_COLUMNS, "nulls", "details"))
_IMAGE = "image_key = ? AND image_sha256 = ? AND status IN (?, ?)"
_SOURCE = "source_key = ? AND root_source_sha256 = ?"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class QueryResult:
    """Rows of a query as plain dicts (JSON-friendly), in output order, with their totals."""

    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    total_cost_usd: float
    source_uri: str | None = None


def open_index(
    base: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    persist: bool = True,
) -> LineageIndex:
    """The synced index of ``base``, ready for queries (close it when done).

    A local store without a ``tables`` folder gets an empty in-memory index (nothing
    to cache). An fsspec URL's index lives in the local cache folder
    (:func:`~bria_dagster.lineage.database.cache_root`, or ``cache_dir``), never under
    the URL; a ``memory://`` one only in memory. ``persist=False`` reads the tables into
    an index in memory and writes no file (a read-only store, ``--no-index``).
    """
    tables = tables_location(base)
    if not persist or os.fspath(base).startswith("memory://"):
        path = ":memory:"
    elif is_local(base):
        path = index_path(base) if os.path.isdir(tables) else ":memory:"
    else:
        path = index_path(base, cache_dir)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise IndexUnavailableError(
                f"cannot create the lineage cache folder {os.path.dirname(path)}: {exc}; "
                f"set --cache-dir or {CACHE_DIR_ENV}, or run with --no-index"
            ) from exc
    try:
        built = None if path == ":memory:" else build_index(path, tables)
    except sqlite3.Error as exc:
        raise IndexUnavailableError(
            f"cannot build the lineage index {path}: {exc}; run with --no-index"
        ) from exc
    conn = connect(path)
    try:
        stats = sync_tables(conn, tables)
        if built is not None:
            stats = built.add(stats)
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
    return LineageIndex(conn, source=source, stats=stats)


def sync(
    base: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> SyncStats:
    """Bring the index of ``base`` (:func:`~bria_dagster.lineage.database.index_path`) up
    to date with the Parquet tables; what the sync did."""
    with open_index(base, cache_dir=cache_dir) as index:
        return index.stats


class LineageIndex(ImageResolver):
    """``trace`` and ``derived`` over the SQLite index of the record tables, as plain dicts.

    Open one with :func:`open_index` (a base's tables, through its cached index) or
    :meth:`of_records` (rows a caller holds); close it when done (or use ``with``).
    """

    def __init__(self, conn: sqlite3.Connection, *, source: str, stats: SyncStats) -> None:
        self.conn = conn
        self.source = source
        self.stats = stats
        # One read transaction: every lookup of a query sees the same snapshot, even
        # while another process syncs (WAL readers do not wait for writers).
        conn.execute("BEGIN")
        self._paths = {i: p for i, p in conn.execute("SELECT id, path FROM tables")}

    @classmethod
    def of_records(cls, records: pa.Table, *, source: str = "the given records") -> LineageIndex:
        """An in-memory index of ``records`` (an Arrow table with at least the indexed
        columns and ``created_at``), for rows that are not (yet) in a store."""
        conn = connect(":memory:")
        try:
            stats = load_table(conn, records)
        except BaseException:
            conn.close()
            raise
        return cls(conn, source=source, stats=stats)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self.conn.close()

    def __enter__(self) -> LineageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.stats.records

    # ----------------------------------------------------------------- rows

    def _order(self, row: dict[str, Any]) -> tuple[str, int]:
        """Where ``row`` sits among the tables: file path, then position in the file."""
        return self._paths[row["id"] >> ROW_BITS], row["id"] & ((1 << ROW_BITS) - 1)

    def _select(
        self, where: str, params: Sequence[Any], *, with_: str = ""
    ) -> list[dict[str, Any]]:
        sql = f"{with_} SELECT {_SELECT} FROM records WHERE {where}"
        rows = []
        for row_id, *found, nulls, details in self.conn.execute(sql, params):
            row = dict(zip(FILTER_COLUMNS, found, strict=True))
            row.update(unpack_details(nulls, details), id=row_id)
            rows.append(row)
        rows.sort(key=self._order)
        return rows

    def _image_rows(self, sha: str) -> list[dict[str, Any]]:
        """The ok/reused rows of image ``sha``: rows of runs that made it first, then rows
        of runs that reused it; newest first within each (ties: table order)."""
        rows = self._select(_IMAGE, (sha_key(sha), sha, OK, REUSED))
        # A missing time sorts first.
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
        return self._exists(_SOURCE, (sha_key(sha), sha))

    def _is_known(self, sha: str) -> bool:
        return self._exists(_IMAGE, (sha_key(sha), sha, OK, REUSED)) or self._is_root(sha)

    # ----------------------------------------------------------------- resolving names

    def _prefix_matches(self, prefix: str) -> set[str]:
        head = prefix[:KEY_HEX]
        low = int(head.ljust(KEY_HEX, "0"), 16)
        high = int(head.ljust(KEY_HEX, "f"), 16)
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
            hits = self._select(where, (uri_key(text), text))
            if hits:
                return str(hits[0][sha_column])
        return None

    # ----------------------------------------------------------------- queries

    def trace(self, image: str, *, all_records: bool = False) -> QueryResult:
        """The chain from ``image`` back to its catalog source, output first.

        One row per hop (``hop`` 0 is ``image`` itself) plus a final ``source`` row.
        A hop uses the newest row of a run that made its image or, when only reused rows
        are left (the producing table was rewritten), the newest reused row, which still
        names the producing run. With ``all_records`` every row of a hop's image (all
        runs) is returned: the rows that made it, then the rows that reused it, newest
        first within each.
        """
        sha = self.resolve_image(image)
        chain: list[dict[str, Any]] = []
        # A no-op row holds its parent's image: traced itself, its hop first, then the
        # image's maker; reached as a parent, only the maker: a 16:9 expansion of a scene
        # comes from the scene, not from a 1:1 no-op that kept the same bytes.
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
        last = chain[-1] if chain else self._select(_SOURCE, (sha_key(sha), sha))[0]
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
        """Every image made from ``source``: a sku, a source sha256 or URI, or any image sha.

        For an intermediate image, its descendants through parent links. Rows are sorted
        by step (as the steps are declared), then sku and variant;
        ``failed`` flags failed rows, which are left out unless ``include_failed``. Rows
        of the catalog step itself (step ``source``) are not descendants and are left out.
        """
        # The step declarations load only here: trace and the sync need no step order, and
        # importing them (their contracts, pydantic) would triple the CLI's start-up.
        from ..steps.registry import step_rank

        order = step_rank()
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
                order.get(row["step"], len(order)),
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
                "source_uri_key = ? AND root_source_uri = ?", (uri_key(source), source)
            )
            if rows:
                return rows
        sha = self._source_sha(source)
        if self._is_root(sha):
            return self._select(_SOURCE, (sha_key(sha), sha))
        # Rows whose parent chain leads to ``sha``: every image reachable through parent links.
        reached = (
            "WITH RECURSIVE reached(sha, k) AS (SELECT ?, ? UNION "
            "SELECT r.image_sha256, r.image_key FROM records r JOIN reached "
            "ON r.parent_key = reached.k AND r.parent_sha256 = reached.sha "
            "WHERE r.image_sha256 IS NOT NULL)"
        )
        return self._select(
            "parent_key IN (SELECT k FROM reached) AND parent_sha256 IN (SELECT sha FROM reached)",
            (sha, sha_key(sha)),
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
