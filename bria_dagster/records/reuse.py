"""The reuse index: request fingerprint -> the output rows of an earlier request.

A step answers a request from earlier records when an ok (or reused) request with
the same fingerprint made images that are still in the store. Finding those
records must not cost more as history grows, so each asset keeps an index beside
its tables, sharded by the first two hex digits of the fingerprint; a step reads
only the shards of the fingerprints it needs. A small shard is read whole once per
index object (one object per step run); in a large one (a long history) a lookup
reads, per file, only the fingerprints of the row group whose range can hold the one
it wants (files are sorted by fingerprint), and whole rows only on a hit.

Layout under the pipeline's base (a local folder or any fsspec URL)::

    reuse/v1/<asset>/<ab>/L<level>-<key>-<writer>.parquet   index entries
    reuse/v1/<asset>/_tables/<table file>~<stamp>           tables already indexed

Entries are only ever added as new files, each under a name of its own, so runs
writing at once never lose each other's entries (duplicates are harmless). When a
shard holds ``compact_at`` files of one level, the reader that finds them merges
them into one file of the next level: it writes the merged file first, then deletes
what it replaced, so a concurrent reader sees either set, both complete (a reader
that lists a file then finds it gone reads the shard again).

An index object made for one partition (``partition=``) first answers from that
partition's own table, read once: a re-run of a batch finds its earlier requests there in
one read, and reads the index's shards only for the requests the table does not hold.

The tables stay the source of truth; the index is derived data. Every table the IO
manager writes is indexed at once (:meth:`ReuseIndex.add_table`) and marked by its
size and modification stamp. Before its first lookup, an index object lists the
asset's tables and the marks (:meth:`ReuseIndex.sync`) and indexes any table without
a current mark: a table written by an older version, by hand, or whose entries were
lost. A missing or stale index therefore costs at most reuse hits (a request is paid
again), never a wrong answer: an entry only ever says which images a fingerprint's
request made.
``bria-dagster reuse rebuild --base DIR`` drops the index and derives it again from
the tables, one compacted file per shard (do it while no run is writing).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import posixpath
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from ..errors import RecordTableError, storage_access
from .reuse_entries import (
    INDEX_SCHEMA,
    READ_COLUMNS,
    conform,
    entries_of,
    newest,
    row_group_ranges,
)
from .schema import FINGERPRINT, OK
from .storage import AssetName, PipelineStorage, asset_name
from .store import write_bytes
from .tables import frame_to_table, read_records

__all__ = ["INDEX_SCHEMA", "ReuseIndex", "entries_of", "rebuild"]

logger = logging.getLogger("bria_dagster.records.reuse")

VERSION = "v1"
MARKS = "_tables"
REBUILT_LEVEL = 9  # a rebuilt shard: merged again only by the next rebuild
ROW_GROUP = 512  # rows per row group of a shard file (what a lookup reads at least)
WHOLE_SHARD_BYTES = 1 << 20  # a shard this small is read whole once per index object
WHOLE_FILE_BYTES = 1 << 16  # in a larger shard, files this small are read whole once
SYNC_CHUNK_ROWS = 500_000  # entries held at once while indexing unmarked tables
_RETRIES = 3


class ReuseIndex:
    """The reuse index of one asset in one storage.

    Args:
        storage: the pipeline's storage (or its base folder / URL).
        asset_key: the asset whose tables are indexed.
        compact_at: merge a shard's files of one level once there are this many.
        partition: the partition a step run writes: its own table (an earlier run's) is
            looked in first.
    """

    def __init__(
        self,
        storage: PipelineStorage | str,
        asset_key: AssetName,
        *,
        compact_at: int = 8,
        partition: str | None = None,
    ) -> None:
        self.storage = PipelineStorage.of(storage)
        self.name = asset_name(asset_key)
        self.compact_at = max(2, compact_at)
        base = self.storage.base.rstrip("/")
        self.url = f"{base}/reuse/{VERSION}/{self.name}"
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        self._tables_fs, tables = fsspec.core.url_to_fs(self.storage.table_folder(self.name))
        self._tables = tables.rstrip("/")
        self._lock = threading.RLock()
        self._synced = False
        self._shards: dict[str, pa.Table | list[str]] = {}
        self._footers: dict[str, tuple[pq.FileMetaData, list[tuple[str, str]]]] = {}
        own = None if partition is None else self.storage.table_path(self.name, partition)
        self._own_table = own
        self._own: dict[str, list[dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"ReuseIndex({self.storage.base!r}, {self.name!r})"

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, fingerprints: Iterable[str | None]) -> dict[str, list[dict[str, Any]]]:
        """fingerprint -> the output rows (ordered by output) of the newest indexed request
        with that fingerprint, for those of ``fingerprints`` that have one.

        The first lookup of an index object indexes unmarked tables (:meth:`sync`). Reads
        only the shards of ``fingerprints``; a shard read once is kept by this object (make
        one per step run). Whether the images are still in the store is the caller's check.
        With a ``partition``, the partition's own table answers first (read once).
        """
        wanted = {fingerprint for fingerprint in fingerprints if fingerprint}
        found: dict[str, list[dict[str, Any]]] = {}
        if self._own_table is not None:
            own = self._own_entries()
            found = {fingerprint: own[fingerprint] for fingerprint in wanted if fingerprint in own}
            wanted.difference_update(found)
        if wanted:
            found.update(self._lookup_index(wanted))
        return found

    def _own_entries(self) -> dict[str, list[dict[str, Any]]]:
        """The entries of the partition's own table, by fingerprint (read once)."""
        assert self._own_table is not None
        with self._lock:
            if self._own is None:
                try:
                    table = read_records(self._own_table, READ_COLUMNS)
                except RecordTableError as exc:  # derived use: the index still answers
                    logger.warning("reuse: cannot read %s (%s)", self._own_table, exc)
                    table = None
                entries = INDEX_SCHEMA.empty_table() if table is None else entries_of(table)
                self._own = _by_fingerprint([newest([entries])])
            return self._own

    def _lookup_index(self, wanted: set[str]) -> dict[str, list[dict[str, Any]]]:
        with storage_access(self.url, "read the reuse index"), self._lock:
            if not self._synced:
                self.sync()
                self._synced = True
        shards: dict[str, set[str]] = defaultdict(set)
        for fingerprint in wanted:
            shards[fingerprint[:2]].add(fingerprint)
        jobs = [(shard, sorted(wanted)) for shard, wanted in sorted(shards.items())]
        with storage_access(self.url, "read the reuse index"):
            if self._local or len(jobs) < 2:
                tables = [self._read_shard(*job) for job in jobs]
            else:  # object stores: a few GETs per shard, several shards at once
                with ThreadPoolExecutor(8) as pool:
                    tables = list(pool.map(lambda job: self._read_shard(*job), jobs))
        return _by_fingerprint(tables)

    def get(self, fingerprint: str) -> list[dict[str, Any]] | None:
        """:meth:`lookup` of one fingerprint (``None``: no earlier request has it)."""
        return self.lookup([fingerprint]).get(fingerprint)

    def _read_shard(self, shard: str, wanted: list[str]) -> pa.Table:
        """The newest entries of ``wanted`` in one shard (compacting it when due).

        What is read of a shard is kept by this object: a small shard whole; of a large
        one (a long history) its small files whole and its large files' footers, each
        lookup then reading only the row groups of a large file that can hold ``wanted``.
        """
        keys = pa.array(wanted, pa.string())
        for _ in range(_RETRIES):
            with self._lock:
                cached = self._shards.get(shard)
            if cached is None:
                cached = self._load_shard(shard)
                with self._lock:
                    self._shards[shard] = cached
            try:
                return newest(
                    [
                        part.filter(pc.is_in(part[FINGERPRINT], keys))
                        if isinstance(part, pa.Table)
                        else self._read(part, wanted)
                        for part in cached
                    ]
                )
            except FileNotFoundError:  # compacted away under us: list again
                with self._lock:
                    self._shards.pop(shard, None)
        logger.warning("reuse index shard %s/%s kept changing; no reuse from it", self.root, shard)
        return INDEX_SCHEMA.empty_table()

    def _load_shard(self, shard: str) -> list[pa.Table | str]:
        """The shard's parts, newest first: decoded tables, or paths of large files."""
        for _ in range(_RETRIES):
            files = self._files(shard)
            if files:
                self._maybe_compact(list(files))
            try:
                if sum(files.values()) <= WHOLE_SHARD_BYTES:
                    return [newest([self._read(path) for path in files])]
                return [
                    self._read(path) if size <= WHOLE_FILE_BYTES else path
                    for path, size in files.items()
                ]
            except FileNotFoundError:  # compacted away under us: list again
                continue
        logger.warning("reuse index shard %s/%s kept changing; no reuse from it", self.root, shard)
        return []

    def _files(self, shard: str) -> dict[str, int]:
        """The shard's entry files, newest first, with their sizes."""
        folder = f"{self.root}/{shard}"
        try:
            listing = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        sizes = {i["name"]: i.get("size") or 0 for i in listing if _parse(i["name"]) is not None}
        order = sorted(sizes, key=lambda p: (_parse(p)[1], posixpath.basename(p)), reverse=True)
        return {path: sizes[path] for path in order}

    def _read(self, path: str, wanted: list[str] | None = None) -> pa.Table:
        """The entries of one file (``wanted``: only theirs, reading only the row groups
        whose fingerprint range holds one; the file's footer is parsed once per object)."""
        try:
            if wanted is None:
                with contextlib.ExitStack() as stack:
                    source = path if self._local else stack.enter_context(self.fs.open(path, "rb"))
                    table = pq.ParquetFile(source).read()
                return conform(table)
            return self._read_wanted(path, wanted)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            if not self.fs.exists(path):
                raise FileNotFoundError(path) from exc
            # Index files are written without fsync: a crash can leave one unreadable.
            logger.warning("reuse index file %s is unreadable (%s); dropping it", path, exc)
            _remove(self.fs, [path])
            return INDEX_SCHEMA.empty_table()

    def _read_wanted(self, path: str, wanted: list[str]) -> pa.Table:
        with self._lock:
            known = self._footers.get(path)
        with contextlib.ExitStack() as stack:
            source = path if self._local else stack.enter_context(self.fs.open(path, "rb"))
            if known is None:
                parquet = pq.ParquetFile(source)
                known = (parquet.metadata, row_group_ranges(parquet.metadata))
                with self._lock:
                    self._footers[path] = known
            metadata, ranges = known
            groups = [
                i for i, (low, high) in enumerate(ranges) if any(low <= w <= high for w in wanted)
            ]
            if not groups:
                return INDEX_SCHEMA.empty_table()
            parquet = pq.ParquetFile(source, metadata=metadata)
            # The fingerprints first (a new request's lookup ends there), then whole rows
            # of the groups that hold one.
            keys = parquet.read_row_groups(groups, columns=[FINGERPRINT])
            if not pc.any(pc.is_in(keys[FINGERPRINT], pa.array(wanted, pa.string()))).as_py():
                return INDEX_SCHEMA.empty_table()
            table = parquet.read_row_groups(groups)
        table = table.filter(pc.is_in(table[FINGERPRINT], pa.array(wanted, pa.string())))
        return conform(table)

    # -- writing ---------------------------------------------------------------------------

    def add(self, records: pd.DataFrame | pa.Table) -> int:
        """Index the usable rows of an ImageRecord table; the number of entries added."""
        entries = entries_of(records)
        self._write(entries, level=0)
        return len(entries)

    def add_table(self, path: str, records: pd.DataFrame | pa.Table | None = None) -> int:
        """Index the table at ``path`` (``records``: its rows, when the caller has them) and
        mark it indexed; what the IO manager calls after writing a step table."""
        fs, root = fsspec.core.url_to_fs(path)
        stamp = _stamp(fs.info(root))
        if records is None:
            records = read_records(path, READ_COLUMNS)
            if records is None:  # removed since it was written: nothing to index
                return 0
        # Only what this table's run made: its reused rows' entries are already indexed
        # from the table that first recorded them (an unchanged re-run writes nothing
        # here). sync() and rebuild() index reused rows too: there, their producing table
        # may have been rewritten since.
        table = records if isinstance(records, pa.Table) else frame_to_table(records)
        added = self.add(table.filter(pc.equal(table["status"], OK)))
        self._mark(posixpath.basename(root), stamp)
        return added

    def sync(self, *, level: int = 0) -> int:
        """Index the asset's tables that have no current mark; the number of tables indexed.

        ``level``: of the files written (:func:`rebuild` writes its own top level)."""
        try:
            listing = self._tables_fs.ls(self._tables, detail=True)
        except FileNotFoundError:
            return 0
        tables = {
            posixpath.basename(info["name"]): _stamp(info)
            for info in listing
            if info.get("type") == "file" and info["name"].endswith(".parquet")
        }
        marks = self._marks()
        todo = [name for name, stamp in sorted(tables.items()) if stamp not in marks.get(name, ())]
        stale = [
            f"{name}~{stamp}"
            for name, stamps in marks.items()
            for stamp in stamps
            if tables.get(name) != stamp
        ]
        if stale:
            _remove(self.fs, [f"{self.root}/{MARKS}/{m}" for m in stale])
        pending: list[pa.Table] = []
        done: list[str] = []
        rows = 0
        folder = self.storage.table_folder(self.name)
        for name in todo:
            try:
                records = read_records(f"{folder}/{name}", READ_COLUMNS)
            except (RecordTableError, OSError) as exc:  # left unmarked: tried again next time
                logger.warning("reuse index %s: cannot read table %s (%s)", self.name, name, exc)
                continue
            if records is None:  # removed since it was listed
                continue
            entries = entries_of(records)
            pending.append(entries)
            done.append(name)
            rows += len(entries)
            if rows >= SYNC_CHUNK_ROWS:
                self._flush(pending, done, tables, level)
                pending, done, rows = [], [], 0
        self._flush(pending, done, tables, level)
        if todo:
            logger.info("reuse index %s: indexed %d table(s)", self.name, len(todo))
        return len(todo)

    def _flush(
        self, pending: list[pa.Table], names: list[str], stamps: dict[str, str], level: int
    ) -> None:
        if pending:
            self._write(pa.concat_tables(pending), level=level)
        for name in names:
            self._mark(name, stamps[name])

    def _marks(self) -> dict[str, set[str]]:
        try:
            names = self.fs.ls(f"{self.root}/{MARKS}", detail=False)
        except FileNotFoundError:
            return {}
        marks: dict[str, set[str]] = defaultdict(set)
        for path in names:
            table, _, stamp = posixpath.basename(path).rpartition("~")
            if table:
                marks[table].add(stamp)
        return marks

    def _mark(self, table: str, stamp: str) -> None:
        write_bytes(self.fs, f"{self.root}/{MARKS}/{table}~{stamp}", b"", durable=False)

    def _write(self, entries: pa.Table, *, level: int, key: int | None = None) -> None:
        """Write ``entries`` as one new file per shard they touch."""
        if not len(entries):
            return
        key = time.time_ns() // 1000 if key is None else key
        entries = entries.sort_by([(FINGERPRINT, "ascending"), ("output", "ascending")])
        shard = pc.utf8_slice_codeunits(entries[FINGERPRINT], 0, 2).to_numpy(zero_copy_only=False)
        starts = [0, *(i for i in range(1, len(shard)) if shard[i] != shard[i - 1]), len(shard)]
        writer = uuid.uuid4().hex[:12]
        with self._lock:  # read again on the next lookup
            for a in starts[:-1]:
                self._shards.pop(shard[a], None)
        jobs = [
            (
                f"{self.root}/{shard[a]}/L{level}-{key:016x}-{writer}.parquet",
                entries.slice(a, b - a),
            )
            for a, b in itertools.pairwise(starts)
        ]
        if self._local or len(jobs) == 1:
            for path, part in jobs:
                self._write_file(path, part)
        else:  # object stores: one PUT per shard, several at once
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda job: self._write_file(*job), jobs))

    def _write_file(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP)
        write_bytes(self.fs, path, sink.getvalue().to_pybytes(), durable=False)

    # -- compaction ------------------------------------------------------------------------

    def _maybe_compact(self, files: list[str]) -> None:
        levels: dict[int, list[str]] = defaultdict(list)
        for path in files:
            levels[_parse(path)[0]].append(path)
        for level, group in levels.items():
            if level < REBUILT_LEVEL and len(group) >= self.compact_at:
                try:
                    self._merge(group, level + 1)
                except FileNotFoundError:  # another reader compacted them first
                    pass
                except Exception:  # derived data: a failed merge only leaves more files
                    logger.warning(
                        "reuse index: merging %d files failed", len(group), exc_info=True
                    )

    def _merge(self, files: list[str], level: int) -> None:
        """Replace ``files`` (one shard, newest first) by one file of ``level``."""
        merged = newest([self._read(path) for path in files])
        key = max(_parse(path)[1] for path in files)
        self._write(merged, level=level, key=key)
        _remove(self.fs, files)

    def compact(self) -> None:
        """Merge each shard into one file (what :func:`rebuild` ends with)."""
        for shard in self._shard_names():
            files = list(self._files(shard))
            if len(files) > 1:
                self._merge(files, REBUILT_LEVEL)

    def _shard_names(self) -> Iterator[str]:
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return
        for path in sorted(names):
            name = posixpath.basename(path.rstrip("/"))
            if name != MARKS:
                yield name

    def clear(self) -> None:
        """Drop the whole index of this asset (entries and marks)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


def rebuild(
    storage: PipelineStorage | str, asset_keys: Iterable[str] | None = None
) -> dict[str, int]:
    """Drop and re-derive the reuse index of each asset (default: every asset with tables)
    from its tables; the number of tables indexed per asset."""
    storage = PipelineStorage.of(storage)
    if asset_keys is None:
        fs, root = fsspec.core.url_to_fs(storage.tables_uri)
        try:
            listing = fs.ls(root, detail=True)
        except FileNotFoundError:
            listing = []
        asset_keys = sorted(
            posixpath.basename(i["name"].rstrip("/")) for i in listing if i["type"] == "directory"
        )
    done = {}
    for name in asset_keys:
        index = ReuseIndex(storage, name)
        index.clear()
        done[name] = index.sync(level=REBUILT_LEVEL)
        index.compact()
    return done


def _by_fingerprint(tables: Iterable[pa.Table]) -> dict[str, list[dict[str, Any]]]:
    """Entries (each table sorted by fingerprint and output) as fingerprint -> rows."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table in tables:
        for row in table.to_pylist():
            found.setdefault(row[FINGERPRINT], []).append(row)
    return found


def _parse(path: str) -> tuple[int, int] | None:
    """``L<level>-<key hex>-<writer>.parquet`` -> (level, key); None for anything else."""
    name = posixpath.basename(path)
    if not (name.startswith("L") and name.endswith(".parquet")):
        return None
    parts = name[1:].split("-")
    try:
        return int(parts[0]), int(parts[1], 16)
    except (IndexError, ValueError):
        return None


def _stamp(info: dict[str, Any]) -> str:
    """A short token that changes when a listed file is rewritten: its size with its ETag
    where the store gives one, else its modification time (listing and ``info`` agree)."""
    tag = info.get("ETag") or info.get("etag") or info.get("generation")
    if not tag:
        when = next(
            (info[k] for k in ("mtime", "LastModified", "updated", "created") if info.get(k)),
            None,
        )
        if isinstance(when, datetime):
            when = when.timestamp()
        tag = "" if when is None else str(round(float(when) * 1000))
    return hashlib.sha1(f"{info.get('size')}|{tag}".encode()).hexdigest()[:16]


def _remove(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
