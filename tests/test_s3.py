"""Storage on S3: a real S3 protocol server on loopback (moto), reached through s3fs
exactly as a user's ``s3://bucket/prefix`` is, endpoint and keys from the AWS variables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from bria_dagster.cli import main
from tests.test_pipeline import BATCH, CountingBackends, materialize, product, write_catalog

ASSETS = ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions")


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    rows = [
        {"sku": "A1", "image_url": product(tmp_path, "A1", 1), "prompt": ""},
        {"sku": "A2", "image_url": product(tmp_path, "A2", 2, "colored"), "prompt": "on oak"},
    ]
    write_catalog(tmp_path, rows)
    return tmp_path


def s3_table(storage: str, asset: str) -> pd.DataFrame:
    with fsspec.open(f"{storage}/tables/product_images__{asset}/{BATCH}.parquet", "rb") as fh:
        return pd.read_parquet(fh)


def test_pipeline_on_s3_stores_images_and_tables_in_the_bucket(catalog, s3_bucket, monkeypatch):
    counter = CountingBackends(monkeypatch)
    storage = f"{s3_bucket}/prefix"
    _, instance = materialize(catalog, storage=storage)
    assert len(counter.calls) == 8  # 2 removes, 2 replaces, 4 expands
    fs = fsspec.filesystem("s3")
    bucket = s3_bucket.removeprefix("s3://")
    tables = sorted(fs.find(f"{bucket}/prefix/tables"))
    assert tables == sorted(
        f"{bucket}/prefix/tables/product_images__{a}/{BATCH}.parquet" for a in ASSETS
    )
    expansions = s3_table(storage, "product_expansions")
    ok = expansions[expansions.status == "ok"]
    assert len(ok) == 4 and ok.image_uri.str.startswith(f"{storage}/images/sha256/").all()
    for uri, sha in zip(ok.image_uri, ok.image_sha256, strict=True):
        assert hashlib.sha256(fs.cat_file(uri)).hexdigest() == sha
    assert not (catalog / "data").exists()  # nothing went to the local default
    assert not fs.glob(f"{bucket}/**/*.tmp") and not fs.glob(f"{bucket}/**/_lineage*")

    counter.calls.clear()
    materialize(catalog, storage=storage, instance=instance)
    assert counter.calls == []  # an unchanged re-run is served from the records in the bucket


def test_lineage_cli_answers_over_s3(catalog, s3_bucket, capsys, tmp_path, monkeypatch):
    storage = f"{s3_bucket}/prefix"
    materialize(catalog, storage=storage)
    expansions = s3_table(storage, "product_expansions")
    output = expansions[expansions.status == "ok"].iloc[0]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    capsys.readouterr()

    for extra in ([], ["--no-index"]):
        args = ["lineage", "trace", output.image_uri, "--base", storage, "--format", "json"]
        assert main([*args, *extra]) == 0
        hops = json.loads(capsys.readouterr().out)
        assert [h["step"] for h in hops] == ["expand", "replace", "remove", "source"]
        assert hops[0]["image_sha256"] == output.image_sha256

        assert main(["lineage", "derived", output.sku, "--base", storage, *extra]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"images derived from {output.sku}")
        assert output.image_sha256[:12] in out
