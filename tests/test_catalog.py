"""Catalog loading: three formats, bad rows kept as rejections, bad files named."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bria_dagster.errors import CatalogError
from bria_dagster.steps.catalog import load_catalog

ROWS = [
    {"sku": "A1", "image_url": "images/a1.jpg", "prompt": "on marble", "seed": "7",
     "aspect_ratios": "4:5;1:1", "brand": "acme"},
    {"sku": "B2", "image_url": "https://cdn.example/b2.jpg", "prompt": "", "seed": "",
     "aspect_ratios": "", "brand": "zeta"},
]  # fmt: skip


def _write(tmp_path: Path, rows: list[dict], fmt: str) -> Path:
    path = tmp_path / f"batch-1.{fmt}"
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_three_formats(tmp_path, fmt):
    batch = load_catalog(_write(tmp_path, ROWS, fmt))
    assert batch.batch == "batch-1"
    assert len(batch.content_sha256) == 64
    assert batch.rejected.empty
    valid = batch.valid
    assert list(valid["sku"]) == ["A1", "B2"]
    assert valid.loc[0, "image_url"] == str((tmp_path / "images/a1.jpg").resolve())
    assert valid.loc[1, "image_url"] == "https://cdn.example/b2.jpg"
    assert valid.loc[0, "aspect_ratios"] == ["4:5", "1:1"]
    assert valid.loc[1, "aspect_ratios"] is None
    assert valid.loc[0, "seed"] == 7 and pd.isna(valid.loc[1, "seed"])
    assert valid.loc[1, "prompt"] is None
    assert list(valid["brand"]) == ["acme", "zeta"]  # extra columns kept


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    rows = [
        {"sku": "", "image_url": "a.jpg", "seed": ""},
        {"sku": "OK1", "image_url": "a.jpg", "seed": ""},
        {"sku": "OK1", "image_url": "b.jpg", "seed": ""},
        {"sku": "E1", "image_url": "", "seed": ""},
        {"sku": "S1", "image_url": "a.jpg", "seed": "abc"},
        {"sku": "S2", "image_url": "a.jpg", "seed": "-3"},
        {"sku": "R1", "image_url": "a.jpg", "seed": "", "aspect_ratios": "7:3"},
    ]
    batch = load_catalog(_write(tmp_path, rows, "csv"))
    assert list(batch.valid["sku"]) == ["OK1"]
    rejected = batch.rejected.set_index("row_number")
    assert len(rejected) == 6  # nothing silently dropped
    assert rejected.loc[1, "reason"] == "sku is empty"
    assert rejected.loc[3, "reason"] == "duplicate sku 'OK1'; first seen on row 2"
    assert rejected.loc[4, "column"] == "image_url"
    assert "not an integer" in rejected.loc[5, "reason"]
    assert "allowed 0..2147483647" in rejected.loc[6, "reason"]
    assert rejected.loc[7, "column"] == "aspect_ratios"
    assert "'7:3'" in rejected.loc[7, "reason"]


def test_bad_files_are_named(tmp_path):
    with pytest.raises(CatalogError, match=r"nope\.csv: file not found"):
        load_catalog(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_bytes(b"x")
    with pytest.raises(CatalogError, match=r"x\.xlsx: unknown file type '\.xlsx'"):
        load_catalog(tmp_path / "x.xlsx")
    (tmp_path / "cols.csv").write_text("sku,url\nA,b\n")
    with pytest.raises(CatalogError, match=r"cols\.csv: required column\(s\) image_url missing"):
        load_catalog(tmp_path / "cols.csv")
    (tmp_path / "broken.jsonl").write_text('{"sku": "A", "image_url": "x"}\n{not json\n')
    with pytest.raises(CatalogError, match=r"broken\.jsonl: not valid JSONL: line 2, column 2"):
        load_catalog(tmp_path / "broken.jsonl")
    (tmp_path / "list.jsonl").write_text('{"sku": "A", "image_url": "x"}\n\n[1, 2]\n')
    with pytest.raises(CatalogError, match=r"list\.jsonl: not valid JSONL: line 3: a JSON list"):
        load_catalog(tmp_path / "list.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(CatalogError, match=r"broken\.parquet: not valid PARQUET"):
        load_catalog(tmp_path / "broken.parquet")
