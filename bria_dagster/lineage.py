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

import hashlib
import os
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .errors import BriaError
from .records import COLUMNS, FAILED, IMAGE_RECORD_SCHEMA, OK, REUSED, records_to_frame

__all__ = [
    "DERIVED_COLUMNS",
    "LINEAGE_COLUMNS",
    "TRACE_COLUMNS",
    "LineageIndex",
    "LineageNotFoundError",
    "RecordTableError",
    "derived",
    "derived_images",
    "load_records",
    "total_cost",
    "trace",
    "trace_image",
]

DEFAULT_BASE = "bria_data"
MIN_PREFIX = 8
STEP_ORDER = {"source": 0, "remove": 1, "replace": 2, "expand": 3}

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
    "cost_usd",
    "run_id",
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
    "cost_usd",
    "run_id",
    "partition",
    "asset_key",
    "created_at",
    "error_class",
    "error_message",
)
# The columns the queries need: loading only these keeps a million-row store quick.
LINEAGE_COLUMNS = tuple(
    c
    for c in COLUMNS
    if c in {*TRACE_COLUMNS, *DERIVED_COLUMNS, "root_source_uri"} and c not in {"hop", "failed"}
)

_HEX = re.compile(r"[0-9a-f]+")
_SHA = re.compile(r"[0-9a-f]{64}")


class LineageNotFoundError(BriaError, LookupError):
    """An image, sku or source named in a lineage query is not in the record tables."""


class RecordTableError(BriaError):
    """A record table under ``<base>/tables`` could not be read with the ImageRecord schema."""


# --------------------------------------------------------------------------- loading


def _tables_root(base: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(os.fspath(base))
    return fs, f"{root.rstrip('/')}/tables"


def table_files(base: str | os.PathLike[str] = DEFAULT_BASE) -> list[str]:
    """The record tables under ``<base>/tables/<asset_name>/<partition>.parquet``, sorted."""
    fs, tables = _tables_root(base)
    found = fs.glob(f"{tables}/*/*.parquet")
    # Hidden or underscore names are temporaries and caches, never step tables.
    return sorted(
        p for p in found if not posixpath.basename(p).startswith((".", "_")) and fs.isfile(p)
    )


def load_records(
    base: str | os.PathLike[str] = DEFAULT_BASE, *, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Every record row under ``<base>/tables``, read with the ImageRecord schema.

    ``columns`` limits what is read (the queries need only :data:`LINEAGE_COLUMNS`).
    An empty or missing store gives an empty frame with the requested columns.
    """
    wanted = list(columns) if columns is not None else list(COLUMNS)
    unknown = [c for c in wanted if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown ImageRecord columns {unknown}; known: {list(COLUMNS)}")
    fs, tables = _tables_root(base)
    files = table_files(base)
    if not files:
        return records_to_frame([])[wanted]
    try:
        dataset = ds.dataset(files, schema=IMAGE_RECORD_SCHEMA, format="parquet", filesystem=fs)
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise RecordTableError(
            f"cannot read the record tables under {tables} with the ImageRecord schema: {exc}. "
            "Remove or rewrite the offending file (only pipeline-written Parquet belongs there)."
        ) from exc
    return table.to_pandas()


# --------------------------------------------------------------------------- the index


class LineageIndex:
    """Record rows indexed by image sha256, parent link, source and sku.

    Built once (vectorised), then :meth:`trace` and :meth:`derived` answer in
    milliseconds even over millions of rows. A sha can appear in several rows
    (the same image made or reused by several runs); a hop uses the most recent
    ok/reused row.
    """

    def __init__(self, records: pd.DataFrame, *, source: str = "the given records") -> None:
        missing = [c for c in LINEAGE_COLUMNS if c not in records.columns]
        if missing:
            raise ValueError(f"records lack the lineage columns {missing}")
        self.source = source
        self.frame = records.reset_index(drop=True)
        frame = self.frame
        good = frame["status"].isin([OK, REUSED]) & frame["image_sha256"].notna()
        good_pos = np.flatnonzero(good.to_numpy(dtype=bool))
        # Epoch integers (one unit per frame), for newest-first ordering.
        self._created = pd.to_datetime(frame["created_at"], utc=True).astype("int64").to_numpy()
        created = self._created[good_pos]
        # Most recent first, so the first occurrence of each sha is its hop row.
        ordered = good_pos[np.argsort(-created, kind="stable")]
        shas = frame["image_sha256"].to_numpy()[ordered]
        codes, uniques = pd.factorize(shas)
        _, first = np.unique(codes, return_index=True)  # first occurrence = most recent row
        self._best: dict[str, int] = dict(
            zip(uniques.tolist(), ordered[first].tolist(), strict=True)
        )
        roots = frame["root_source_sha256"].dropna().unique()
        self._roots: set[str] = set(pd.Series(roots, dtype=object).tolist())
        self._skus: pd.Index | None = None
        self._sha_list: pa.Array | None = None

    @classmethod
    def load(cls, base: str | os.PathLike[str] = DEFAULT_BASE) -> LineageIndex:
        """Read the lineage columns of every record table under ``base`` and index them."""
        return cls(load_records(base, columns=LINEAGE_COLUMNS), source=f"{os.fspath(base)}/tables")

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"LineageIndex({len(self)} rows, {len(self._best)} images from {self.source})"

    # ----------------------------------------------------------------- resolving names

    def _known_shas(self) -> pa.Array:
        if self._sha_list is None:
            self._sha_list = pa.array(sorted({*self._best, *self._roots}), type=pa.string())
        return self._sha_list

    def _by_prefix(self, prefix: str) -> str | None:
        if len(prefix) == 64:
            return prefix if prefix in self._best or prefix in self._roots else None
        known = self._known_shas()
        matches = known.filter(pc.starts_with(known, prefix)).to_pylist()
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
        if _HEX.fullmatch(low) and len(low) <= 64:
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
        stem = posixpath.basename(text.replace("\\", "/").rstrip("/")).split(".")[0].lower()
        if _SHA.fullmatch(stem) and (stem in self._best or stem in self._roots):
            return stem
        for column, sha_column in (
            ("image_uri", "image_sha256"),
            ("root_source_uri", "root_source_sha256"),
        ):
            hit = self.frame[sha_column][self.frame[column] == text].dropna()
            if len(hit):
                return str(hit.iloc[0])
        digest = _hash_file(text)
        if digest and (digest in self._best or digest in self._roots):
            return digest
        return None

    def _not_found(self, what: str, how: str) -> LineageNotFoundError:
        return LineageNotFoundError(
            f"no record of {what!r} ({how}) in {len(self)} record rows from {self.source}; "
            "check the image or base location (--base), or run the pipeline for it first"
        )

    # ----------------------------------------------------------------- queries

    def trace(self, image: str, *, all_records: bool = False) -> pd.DataFrame:
        """The chain from ``image`` back to its catalog source, output first.

        One row per hop (``hop`` 0 is ``image`` itself) plus a final ``source`` row.
        With ``all_records`` every row that produced a hop's image (all runs) is
        returned, newest first within the hop.
        """
        sha = self.resolve_image(image)
        frame = self.frame
        positions: list[tuple[int, int]] = []
        seen: set[str] = set()
        current: str | None = sha
        while current and current in self._best and current not in seen:
            seen.add(current)
            best = self._best[current]
            hop = len(seen) - 1
            if all_records:
                rows = np.flatnonzero((frame["image_sha256"] == current).to_numpy(dtype=bool))
                newest = np.argsort(-self._created[rows], kind="stable")
                rows = rows[newest]
                positions.extend((hop, int(r)) for r in rows)
            else:
                positions.append((hop, best))
            parent = frame["parent_sha256"].iat[best]
            current = None if pd.isna(parent) else str(parent)

        hops = [h for h, _ in positions]
        chain = frame.iloc[[p for _, p in positions]].reset_index(drop=True)
        if positions:
            last = frame.iloc[positions[-1][1]]
            source_sha, source_uri, sku = (
                last["root_source_sha256"],
                last["root_source_uri"],
                last["sku"],
            )
        else:  # the image is itself a catalog source
            hit = frame[frame["root_source_sha256"] == sha].iloc[0]
            source_sha, source_uri, sku = sha, hit["root_source_uri"], hit["sku"]
        source_row = {
            "step": "source",
            "sku": sku,
            "image_sha256": source_sha,
            "image_uri": source_uri,
            "cost_usd": 0.0,
        }
        chain = chain.assign(hop=hops)
        source = pd.DataFrame([{**source_row, "hop": (hops[-1] + 1) if hops else 0}])
        out = pd.concat([chain[list(TRACE_COLUMNS)], source], ignore_index=True)
        out = out.reindex(columns=list(TRACE_COLUMNS))
        out["cost_usd"] = out["cost_usd"].fillna(0.0).astype(float)
        out["seed"] = out["seed"].astype("Int64")
        out.attrs["total_cost_usd"] = total_cost(out)
        return out

    def derived(self, source: str, *, include_failed: bool = False) -> pd.DataFrame:
        """Every image made from ``source``: a sku, a source sha256 or URI, or any image sha.

        For an intermediate image, its descendants through parent links. Rows are
        sorted remove < replace < expand, then sku and variant; ``failed`` flags
        failed rows, which are left out unless ``include_failed``.
        """
        mask = self._derived_mask(str(source).strip())
        frame = self.frame
        rows = frame[mask]
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
        low = source.lower()
        if _HEX.fullmatch(low) and len(low) <= 64:
            if len(low) < MIN_PREFIX:
                raise LineageNotFoundError(
                    f"{source!r} is neither a sku in {self.source} nor a usable sha256 prefix "
                    f"(give at least {MIN_PREFIX} hex characters)"
                )
            sha = self._by_prefix(low)
        else:
            uri_mask = (frame["root_source_uri"] == source).to_numpy(dtype=bool)
            if uri_mask.any():
                return uri_mask
            sha = self._sha_from_location(source)
        if sha is None:
            raise LineageNotFoundError(
                f"no sku, source sha256, image sha256 or source URI matches {source!r} in "
                f"{len(self)} record rows from {self.source}; check the spelling or --base"
            )
        if sha in self._roots:
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


def _hash_file(location: str) -> str | None:
    """sha256 of the bytes at a local path or fsspec URL, or None when it cannot be read."""
    try:
        with fsspec.open(location, "rb") as fh:
            digest = hashlib.sha256()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()
    except (OSError, ValueError, ImportError):
        return None


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
    return _plain_rows(trace(image, base))


def derived_images(
    source: str, base: str | os.PathLike[str] = DEFAULT_BASE, *, include_failed: bool = False
) -> list[dict[str, Any]]:
    """For Dagster code: every image made from ``source`` under ``base``, as plain dicts."""
    return _plain_rows(derived(source, base, include_failed=include_failed))


def _plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
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
