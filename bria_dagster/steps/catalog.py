"""Catalog batches: load and validate a CSV, Parquet or JSONL file of SKUs and image URLs.

A bad *file* (unreadable, unknown format, a required column missing) raises
:class:`~bria_dagster.errors.CatalogError` naming the file, row and column. A bad
*row* never sinks the batch and is never dropped silently: it lands in
``CatalogBatch.rejected`` with its reason, and the pipeline records it as failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pandas as pd

from ..client.contracts.base import MAX_SEED
from ..client.contracts.expand import AspectRatio
from ..errors import CatalogError

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "CatalogBatch", "load_catalog"]

REQUIRED_COLUMNS = ("sku", "image_url")
OPTIONAL_COLUMNS = ("prompt", "negative_prompt", "ref_image_url", "seed", "aspect_ratios")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
REJECTED_COLUMNS = ["sku", "row_number", "column", "reason"]
_ALLOWED_RATIOS = {r.value for r in AspectRatio}


@dataclass(frozen=True)
class CatalogBatch:
    """One validated catalog batch file."""

    batch: str
    source_path: str
    content_sha256: str
    valid: pd.DataFrame
    """Valid rows, in file order, with ``row_number`` (1-based, header excluded)."""
    rejected: pd.DataFrame
    """Rejected rows: sku, row_number, column, reason."""


def _read(path: str, fmt: str, data: bytes) -> pd.DataFrame:
    import io

    buf = io.BytesIO(data)
    if fmt == "csv":
        return pd.read_csv(buf, dtype=str, keep_default_na=False)
    if fmt == "jsonl":
        return pd.read_json(buf, lines=True, dtype=False)
    return pd.read_parquet(buf)


def _first_bad_jsonl_line(data: bytes) -> str | None:
    """``line N: <why>`` for the first line that is not a JSON object (pandas gives offsets)."""
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number}, column {exc.colno}: {exc.msg}"
        if not isinstance(value, dict):
            return f"line {number}: a JSON {type(value).__name__}, not an object"
    return None


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and pd.isna(value):
        return True
    return isinstance(value, str) and not value.strip()


def _parse_seed(value: Any) -> int | None:
    if _is_blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        seed = int(str(value).strip())
    except ValueError:
        raise ValueError(f"seed {value!r} is not an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is out of range; allowed 0..{MAX_SEED}")
    return seed


def _parse_ratios(value: Any) -> list[str] | None:
    if value is None or (not isinstance(value, list | tuple) and _is_blank(value)):
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    items = (
        [str(v).strip() for v in value]
        if isinstance(value, list | tuple)
        else [p.strip() for p in re.split(r"[;,|]", str(value))]
    )
    items = [i for i in items if i]
    bad = [i for i in items if i not in _ALLOWED_RATIOS]
    if bad:
        raise ValueError(
            f"unknown aspect ratio {', '.join(map(repr, bad))}; allowed "
            + " ".join(r.value for r in AspectRatio)
        )
    return items or None


def _resolve(url: str, folder: str, local: bool) -> str:
    if urlsplit(url).scheme and len(urlsplit(url).scheme) > 1:
        return url
    if local and not Path(url).is_absolute():
        return str((Path(folder) / url).resolve())
    return url


def load_catalog(path: str | Path, *, batch: str | None = None) -> CatalogBatch:
    """Load and validate one catalog batch file (CSV, Parquet or JSONL; fsspec URLs ok)."""
    path_str = str(path)
    suffix = Path(urlsplit(path_str).path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise CatalogError(
            f"catalog {path_str}: unknown file type {suffix or '(none)'!r}; "
            "use .csv, .parquet or .jsonl"
        )
    try:
        with fsspec.open(path_str, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise CatalogError(f"catalog {path_str}: file not found") from None
    except OSError as exc:
        raise CatalogError(f"catalog {path_str}: cannot be read: {exc}") from None
    try:
        frame = _read(path_str, fmt, data)
    except Exception as exc:  # pandas/pyarrow raise many parser errors
        detail = (_first_bad_jsonl_line(data) if fmt == "jsonl" else None) or str(exc)
        raise CatalogError(
            f"catalog {path_str}: not valid {fmt.upper()}: {detail}; fix the file and re-run"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(
            f"catalog {path_str}: required column(s) {', '.join(missing)} missing "
            f"(found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    local = "://" not in path_str or path_str.startswith("file://")
    folder = str(Path(path_str.removeprefix("file://")).parent)

    valid_rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(frame.to_dict("records"), start=1):
        sku = "" if _is_blank(record.get("sku")) else str(record["sku"]).strip()

        def reject(column: str, reason: str, *, sku: str = sku, number: int = number) -> None:
            rejected.append({"sku": sku, "row_number": number, "column": column, "reason": reason})

        if not sku:
            reject("sku", "sku is empty")
            continue
        if sku in seen:
            reject("sku", f"duplicate sku {sku!r}; first seen on row {seen[sku]}")
            continue
        seen[sku] = number
        if _is_blank(record.get("image_url")):
            reject("image_url", "image_url is empty")
            continue
        row = dict(record)
        row["sku"] = sku
        row["image_url"] = _resolve(str(record["image_url"]).strip(), folder, local)
        if not _is_blank(record.get("ref_image_url")):
            row["ref_image_url"] = _resolve(str(record["ref_image_url"]).strip(), folder, local)
        try:
            row["seed"] = _parse_seed(record.get("seed"))
        except ValueError as exc:
            reject("seed", str(exc))
            continue
        try:
            row["aspect_ratios"] = _parse_ratios(record.get("aspect_ratios"))
        except ValueError as exc:
            reject("aspect_ratios", str(exc))
            continue
        for column in ("prompt", "negative_prompt", "ref_image_url"):
            if _is_blank(row.get(column)):
                row[column] = None
        row["row_number"] = number
        valid_rows.append(row)

    columns = list(dict.fromkeys([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *frame.columns]))
    valid = pd.DataFrame(valid_rows, columns=[*columns, "row_number"], dtype=object)
    valid["seed"] = valid["seed"].astype("Int64")
    return CatalogBatch(
        batch=batch or Path(urlsplit(path_str).path).stem,
        source_path=path_str,
        content_sha256=hashlib.sha256(data).hexdigest(),
        valid=valid.reset_index(drop=True),
        rejected=pd.DataFrame(rejected, columns=REJECTED_COLUMNS),
    )


def row_json(row: dict[str, Any]) -> str:
    """A catalog row as JSON, for the ``catalog_row`` lineage column."""
    return json.dumps(row, sort_keys=True, default=str)
