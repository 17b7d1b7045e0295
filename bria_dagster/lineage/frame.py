"""Lineage queries over the ImageRecord tables: where an image came from, what a source became.

The step tables under ``<base>/tables/<asset_name>/<partition>.parquet`` are the
lineage (every row names its parent image, endpoint, parameters, run and cost),
so these queries read them directly; there is no second bookkeeping system.

* :func:`trace` walks from an output image back to its catalog source, one row per hop.
* :func:`derived` lists every image made from a sku, a source image or any intermediate image.

Both accept a records DataFrame, a prebuilt :class:`LineageIndex`, or a base location
(a local folder or any fsspec URL such as ``s3://bucket/bria`` or ``memory://x``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import storage_access, storage_access_error
from ..records.schema import COLUMNS, FAILED, IMAGE_RECORD_SCHEMA, OK, REUSED, records_to_frame
from . import index as _index_module

__all__ = [
    "DERIVED_COLUMNS",
    "KEY_COLUMNS",
    "LINEAGE_COLUMNS",
    "TRACE_COLUMNS",
    "LineageIndex",
    "LineageNotFoundError",
    "RecordTableError",
    "derived",
    "derived_images",
    "load_records",
    "plain_rows",
    "table_files",
    "total_cost",
    "trace",
    "trace_image",
]

DEFAULT_BASE = "bria_data"
# Shared with the SQLite index (lineage_index), so both paths give the same rows and errors.
MIN_PREFIX = _index_module.MIN_PREFIX
STEP_ORDER = _index_module.STEP_ORDER
TRACE_COLUMNS = _index_module.TRACE_COLUMNS
DERIVED_COLUMNS = _index_module.DERIVED_COLUMNS
# The columns the queries need: loading only these keeps a million-row store quick.
LINEAGE_COLUMNS = tuple(
    c
    for c in COLUMNS
    if c in {*TRACE_COLUMNS, *DERIVED_COLUMNS, "root_source_uri"} and c not in {"hop", "failed"}
)

# Read for every row by LineageIndex.load; the other columns only for result rows.
KEY_COLUMNS = (
    "sku",
    "step",
    "variant",
    "status",
    "image_sha256",
    "parent_sha256",
    "root_source_sha256",
    "created_at",
)


LineageNotFoundError = _index_module.LineageNotFoundError
RecordTableError = _index_module.RecordTableError


# --------------------------------------------------------------------------- loading


class _RecordTables:
    """The record tables of one base, read file by file in a fixed order.

    Reading whole files in a known order lets a row be fetched back later by its
    position, so a query reads its few result rows' details instead of every
    column of a million rows.
    """

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.fs, root = fsspec.core.url_to_fs(os.fspath(base))
        self.location = f"{os.fspath(base).rstrip('/')}/tables"
        tables = f"{root.rstrip('/')}/tables"
        with storage_access(self.location, "list record tables"):
            found = self.fs.glob(f"{tables}/*/*.parquet")
        # Hidden or underscore names are temporaries and caches, never step tables.
        self.paths = sorted(p for p in found if not posixpath.basename(p).startswith((".", "_")))
        self.offsets = np.zeros(len(self.paths) + 1, dtype=np.int64)

    def _url(self, path: str) -> str:
        return f"{self.location}/{path.rsplit('/', 2)[-2]}/{posixpath.basename(path)}"

    def _read(self, path: str, columns: Sequence[str]) -> pa.Table:
        try:
            dataset = ds.dataset(
                path, schema=IMAGE_RECORD_SCHEMA, format="parquet", filesystem=self.fs
            )
            return dataset.to_table(columns=list(columns))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            refused = storage_access_error(self._url(path), exc, "read record table")
            if refused is not None:
                raise refused from exc
            raise RecordTableError(
                f"cannot read record table {path} with the ImageRecord schema: {exc}. "
                "Remove or rewrite it (only pipeline-written Parquet belongs under tables/)."
            ) from exc

    def read(self, columns: Sequence[str]) -> pd.DataFrame:
        """``columns`` of every row, file after file; remembers where each file starts."""
        if not self.paths:
            return records_to_frame([])[list(columns)]
        with ThreadPoolExecutor(max_workers=min(8, len(self.paths))) as pool:
            parts = list(pool.map(lambda path: self._read(path, columns), self.paths))
        self.offsets[1:] = np.cumsum([part.num_rows for part in parts])
        return pa.concat_tables(parts).to_pandas()

    def rows(self, positions: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
        """``columns`` of the rows at ``positions`` (as numbered by :meth:`read`), in order."""
        files = np.searchsorted(self.offsets, positions, side="right") - 1
        parts, order = [], []
        for file in np.unique(files):
            here = np.flatnonzero(files == file)
            table = self._read(self.paths[file], columns)
            parts.append(table.take(positions[here] - self.offsets[file]))
            order.append(here)
        if not parts:
            return records_to_frame([])[list(columns)]
        frame = pa.concat_tables(parts).to_pandas()
        frame.index = np.concatenate(order)
        return frame.sort_index()


def table_files(base: str | os.PathLike[str] = DEFAULT_BASE) -> list[str]:
    """The record tables under ``<base>/tables/<asset_name>/<partition>.parquet``, sorted."""
    return _RecordTables(base).paths


def load_records(
    base: str | os.PathLike[str] = DEFAULT_BASE, *, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every record row under ``<base>/tables``, read with the ImageRecord schema.

    ``columns`` limits what is read (the queries need only :data:`LINEAGE_COLUMNS`).
    An empty or missing store gives an empty frame with the requested columns.
    """
    wanted = _check_columns(columns if columns is not None else COLUMNS)
    return _RecordTables(base).read(wanted)


def _check_columns(columns: Sequence[str]) -> list[str]:
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown ImageRecord columns {unknown}; known: {list(COLUMNS)}")
    return list(columns)


# --------------------------------------------------------------------------- the index


class LineageIndex(_index_module.ImageResolver):
    """Record rows, queried with vectorised masks over the sha, parent, source and sku columns.

    Nothing slow is built up front: each lookup is one pass of an Arrow-backed
    comparison (milliseconds over a million rows). A sha can appear in several
    rows (the same image made or reused by several runs); a hop uses the newest row
    of a run that made it, or, when only reused rows are left (the producing table was
    rewritten), the newest reused row, which still names the producing run.
    :meth:`load` reads only :data:`KEY_COLUMNS` and fetches the other columns of
    result rows (or a URI column) from the tables on demand.
    """

    def __init__(
        self,
        records: pd.DataFrame,
        *,
        source: str = "the given records",
        tables: _RecordTables | None = None,
    ) -> None:
        needed = KEY_COLUMNS if tables is not None else LINEAGE_COLUMNS
        missing = [c for c in needed if c not in records.columns]
        if missing:
            raise ValueError(f"records lack the lineage columns {missing}")
        self.source = source
        self.frame = records.reset_index(drop=True)
        self._tables = tables
        frame = self.frame
        good = frame["status"].isin([OK, REUSED]) & frame["image_sha256"].notna()
        self._good = good.to_numpy(dtype=bool)
        self._reused = (frame["status"] == REUSED).to_numpy(dtype=bool)
        # Epoch integers (one unit per frame), for newest-first ordering.
        self._created = pd.to_datetime(frame["created_at"], utc=True).astype("int64").to_numpy()

    @classmethod
    def load(cls, base: str | os.PathLike[str] = DEFAULT_BASE) -> LineageIndex:
        """Read the key columns of every record table under ``base`` (details come on demand)."""
        tables = _RecordTables(base)
        return cls(tables.read(KEY_COLUMNS), source=tables.location, tables=tables)

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"LineageIndex({len(self)} rows from {self.source})"

    def _column(self, name: str) -> pd.Series:
        if name not in self.frame.columns:
            assert self._tables is not None  # __init__ checked the columns otherwise
            self.frame[name] = self._tables.read([name])[name].to_numpy()
        return self.frame[name]

    def _rows(self, positions: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        """The rows at ``positions`` with ``columns``, fetching absent columns from the tables."""
        positions = np.asarray(positions, dtype=np.int64)
        here = [c for c in columns if c in self.frame.columns]
        rows = self.frame.iloc[positions][here].reset_index(drop=True)
        absent = [c for c in columns if c not in self.frame.columns]
        if absent and self._tables is not None:
            fetched = self._tables.rows(positions, absent).reset_index(drop=True)
            rows = pd.concat([rows, fetched], axis=1)
        return rows[list(columns)]

    def _image_rows(self, sha: str) -> np.ndarray:
        """Positions of the ok/reused rows of image ``sha``: the rows of runs that made it
        (ok) first, then the rows of runs that reused it; newest first within each."""
        hits = np.flatnonzero((self.frame["image_sha256"] == sha).to_numpy(dtype=bool) & self._good)
        return hits[np.lexsort((-self._created[hits], self._reused[hits]))]

    def _is_root(self, sha: str) -> bool:
        return bool((self.frame["root_source_sha256"] == sha).any())

    def _is_known(self, sha: str) -> bool:
        return len(self._image_rows(sha)) > 0 or self._is_root(sha)

    # ----------------------------------------------------------------- resolving names

    def _prefix_matches(self, prefix: str) -> set[str]:
        found: set[str] = set()
        for column, mask in (("image_sha256", self._good), ("root_source_sha256", None)):
            values = self.frame[column]
            hit = values.str.startswith(prefix, na=False).to_numpy(dtype=bool)
            found.update(values[hit if mask is None else hit & mask].tolist())
        return found

    def _sha_for_uri(self, text: str) -> str | None:
        for column, sha_column in (
            ("image_uri", "image_sha256"),
            ("root_source_uri", "root_source_sha256"),
        ):
            hit = self.frame[sha_column][(self._column(column) == text).to_numpy(dtype=bool)]
            hit = hit.dropna()
            if len(hit):
                return str(hit.iloc[0])
        return None

    # ----------------------------------------------------------------- queries

    def trace(self, image: str, *, all_records: bool = False) -> pd.DataFrame:
        """The chain from ``image`` back to its catalog source, output first.

        One row per hop (``hop`` 0 is ``image`` itself) plus a final ``source`` row.
        With ``all_records`` every row of a hop's image (all runs) is returned: the
        rows that made it, then the rows that reused it, newest first within each.
        """
        sha = self.resolve_image(image)
        frame = self.frame
        hops: list[int] = []
        positions: list[int] = []
        # A no-op row (recorded, not sent) holds its parent's image. Traced itself, the
        # image's no-op row is hop 0, then the row that made the image. Reached as a
        # parent (an image made from it), the image is only its maker's: a 16:9 expansion
        # of a scene comes from the scene, not from a 1:1 no-op that kept the same bytes.
        # So a hop is an image and whether it was reached through a no-op row.
        seen: set[tuple[str, bool]] = set()
        current: str | None = sha
        through_noop = False
        while current and (current, through_noop) not in seen:
            rows = self._image_rows(current)
            noop = (frame["parent_sha256"].iloc[rows] == current).fillna(False)
            noop = noop.to_numpy(dtype=bool)
            if seen:  # past hop 0: the image's maker, never a no-op that kept it
                rows, noop = rows[~noop], noop[~noop]
            if not len(rows):
                break
            order = np.argsort(~noop, kind="stable")  # no-op rows first, order kept
            rows, noop = rows[order], noop[order]
            seen.add((current, through_noop))
            chosen = rows[noop == noop[0]] if all_records else rows[:1]
            hops.extend([len(seen) - 1] * len(chosen))
            positions.extend(chosen.tolist())
            through_noop = bool(noop[0])
            parent = frame["parent_sha256"].iat[rows[0]]
            current = None if pd.isna(parent) else str(parent)

        columns = [c for c in TRACE_COLUMNS if c != "hop"]
        origin_columns = ["root_source_sha256", "root_source_uri"]
        if positions:
            chain = self._rows(positions, [*columns, *origin_columns]).assign(hop=hops)
            last = chain.iloc[-1]
        else:  # the image is itself a catalog source
            first = np.flatnonzero((frame["root_source_sha256"] == sha).to_numpy(dtype=bool))[0]
            chain = pd.DataFrame(columns=[*columns, *origin_columns, "hop"])
            last = self._rows([first], ["sku", *origin_columns]).iloc[0]
        parts = [chain.drop(columns=origin_columns)]
        # The catalog step may have recorded the source itself (step "source"); otherwise
        # the chain ends with a synthetic row made from the root_source_* columns.
        if not (len(chain) and chain["step"].iloc[-1] == "source"):
            source = {
                "hop": (hops[-1] + 1) if hops else 0,
                "step": "source",
                "sku": last["sku"],
                "image_sha256": last["root_source_sha256"],
                "image_uri": last["root_source_uri"],
                "cost_usd": 0.0,
            }
            parts.append(pd.DataFrame([source]))
        out = pd.concat([p for p in parts if len(p)], ignore_index=True)
        out = out.reindex(columns=list(TRACE_COLUMNS))
        out["cost_usd"] = out["cost_usd"].fillna(0.0).astype(float)
        out["seed"] = out["seed"].astype("Int64")
        out.attrs["total_cost_usd"] = total_cost(out)
        out.attrs["source_uri"] = last["root_source_uri"]
        return out

    def derived(self, source: str, *, include_failed: bool = False) -> pd.DataFrame:
        """Every image made from ``source``: a sku, a source sha256 or URI, or any image sha.

        For an intermediate image, its descendants through parent links. Rows are
        sorted remove < replace < expand, then sku and variant; ``failed`` flags
        failed rows, which are left out unless ``include_failed``. Rows of the
        catalog step itself (step ``source``) are not descendants and are left out.
        """
        # A recorded catalog source is where lineage starts, not something derived from it.
        mask = self._derived_mask(str(source).strip()) & (self.frame["step"] != "source").to_numpy(
            dtype=bool
        )
        positions = np.flatnonzero(mask)
        columns = [c for c in DERIVED_COLUMNS if c != "failed"]
        rows = self._rows(positions, columns)
        failed = (rows["status"] == FAILED).to_numpy(dtype=bool)
        rows = rows.assign(failed=failed)
        if not include_failed:
            rows = rows[~failed]
        rows = rows.assign(_order=rows["step"].map(STEP_ORDER).fillna(len(STEP_ORDER)))
        rows = rows.sort_values(
            ["_order", "sku", "variant", "created_at"], kind="stable"
        ).reset_index(drop=True)
        out = rows[list(DERIVED_COLUMNS)].assign(seed=rows["seed"].astype("Int64"))
        out.attrs["total_cost_usd"] = total_cost(out)
        return out

    def _derived_mask(self, source: str) -> np.ndarray:
        frame = self.frame
        sku_mask = (frame["sku"] == source).to_numpy(dtype=bool)
        if sku_mask.any():
            return sku_mask
        if not _index_module.looks_like_sha(source.lower()):
            uri_mask = (self._column("root_source_uri") == source).to_numpy(dtype=bool)
            if uri_mask.any():
                return uri_mask
        sha = self._source_sha(source)
        if self._is_root(sha):
            return (frame["root_source_sha256"] == sha).to_numpy(dtype=bool)
        return self._descendants(sha)

    def _descendants(self, sha: str) -> np.ndarray:
        """Rows whose parent chain leads to ``sha`` (breadth first over parent links)."""
        frame = self.frame
        parents = frame["parent_sha256"]
        images = frame["image_sha256"]
        mask = np.zeros(len(frame), dtype=bool)
        frontier = {sha}
        visited = {sha}
        while frontier:
            hit = parents.isin(list(frontier)).to_numpy(dtype=bool) & ~mask
            mask |= hit
            children = set(images[hit].dropna().tolist())
            frontier = children - visited
            visited |= children
        return mask


def total_cost(rows: pd.DataFrame) -> float:
    """Sum of ``cost_usd`` over ``rows`` (missing costs count as zero)."""
    if "cost_usd" not in rows.columns or rows.empty:
        return 0.0
    return float(rows["cost_usd"].fillna(0.0).sum())


# --------------------------------------------------------------------------- functions

RecordsOrBase = pd.DataFrame | LineageIndex | str | os.PathLike[str]


def _index(records_or_base: RecordsOrBase) -> LineageIndex:
    if isinstance(records_or_base, LineageIndex):
        return records_or_base
    if isinstance(records_or_base, pd.DataFrame):
        return LineageIndex(records_or_base)
    return LineageIndex.load(records_or_base)


def trace(
    image: str, records_or_base: RecordsOrBase = DEFAULT_BASE, *, all_records: bool = False
) -> pd.DataFrame:
    """The chain from an output image back to its source (see :meth:`LineageIndex.trace`)."""
    return _index(records_or_base).trace(image, all_records=all_records)


def derived(
    source: str, records_or_base: RecordsOrBase = DEFAULT_BASE, *, include_failed: bool = False
) -> pd.DataFrame:
    """Every image made from a sku, source or image (see :meth:`LineageIndex.derived`)."""
    return _index(records_or_base).derived(source, include_failed=include_failed)


def trace_image(image: str, base: str | os.PathLike[str] = DEFAULT_BASE) -> list[dict[str, Any]]:
    """For Dagster code: the lineage of ``image`` under ``base`` as plain dicts, output first."""
    return plain_rows(trace(image, base))


def derived_images(
    source: str, base: str | os.PathLike[str] = DEFAULT_BASE, *, include_failed: bool = False
) -> list[dict[str, Any]]:
    """For Dagster code: every image made from ``source`` under ``base``, as plain dicts."""
    return plain_rows(derived(source, base, include_failed=include_failed))


def plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a query result as JSON-friendly dicts (None, ISO times, Python numbers)."""
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """JSON-friendly Python values: None for missing, ISO text for times, ints for numpy ints."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
