"""Storage on S3: a real S3 protocol server on loopback (moto), reached through s3fs
exactly as a user's ``s3://bucket/prefix`` is, endpoint and keys from the AWS variables."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import fsspec
import pandas as pd
import pytest

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.cli import main
from bria_dagster.lineage import database as lineage_database
from bria_dagster.lineage import index as lineage_index
from bria_dagster.records.tables import records_to_frame
from bria_dagster.testing import AWS_ENV
from tests.test_lineage import product_rows, sha, write_store
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
    for uri, digest in zip(ok.image_uri, ok.image_sha256, strict=True):
        assert hashlib.sha256(fs.cat_file(uri)).hexdigest() == digest
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
    monkeypatch.delenv("BRIA_DAGSTER_CACHE_DIR")
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
    # The index is in the default local cache, never in the bucket.
    cached = os.listdir(tmp_path / "cache" / "bria-dagster" / "lineage")
    assert len([name for name in cached if name.endswith(".sqlite")]) == 1
    bucket = s3_bucket.removeprefix("s3://")
    assert not [p for p in fsspec.filesystem("s3").find(bucket) if "sqlite" in p]


@pytest.fixture
def wrong_credentials(s3_server_session, monkeypatch) -> Iterator[None]:
    """moto checks signatures from here on, and our keys are in no IAM user of its."""
    from moto.core import enable_iam_authentication

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    s3_server_session.fresh_filesystems()
    with enable_iam_authentication():
        yield
    monkeypatch.undo()
    s3_server_session.fresh_filesystems()


def run_partition(folder: Path, storage: str) -> dg.ExecuteInProcessResult:
    settings = PipelineSettings(catalog_dir=str(folder / "catalogs"), aspect_ratios=("1:1",))
    pipeline = ProductImagePipeline(settings=settings, storage=storage)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, [BATCH])
    return dg.materialize(
        pipeline.build_assets(),
        partition_key=BATCH,
        instance=instance,
        resources={
            "bria": BriaResource(backend="local", file_roots=[str(folder)]),
            pipeline.io_manager_key: pipeline.io_manager(),
        },
        raise_on_error=False,
    )


def test_wrong_s3_credentials_fail_the_run_clearly_and_write_nothing(
    catalog, s3_bucket, wrong_credentials
):
    storage = f"{s3_bucket}/prefix"
    result = run_partition(catalog, storage)
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert failure.step_failure_data.user_failure_data is not None  # a dg.Failure
    metadata = {k: v.value for k, v in failure.step_failure_data.user_failure_data.metadata.items()}
    assert metadata["storage"] == storage
    assert "AWS_ACCESS_KEY_ID" in metadata["check"]
    assert storage in error.message and "AWS_SECRET_ACCESS_KEY" in error.message
    assert "not-the-secret-at-all" not in error.message
    with pytest.raises(PermissionError):  # nothing could be read: not even a listing
        fsspec.filesystem("s3").ls(s3_bucket)


def test_nothing_is_half_written_with_wrong_s3_credentials(catalog, s3_bucket, s3_server_session):
    storage = f"{s3_bucket}/prefix"
    from moto.core import enable_iam_authentication

    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-for-this-test"
    try:
        s3_server_session.fresh_filesystems()
        with enable_iam_authentication():
            assert not run_partition(catalog, storage).success
    finally:
        os.environ.update(AWS_ENV)
        s3_server_session.fresh_filesystems()
    assert fsspec.filesystem("s3").find(s3_bucket) == []  # no table, no image, no temp object


def test_lineage_cli_with_wrong_s3_credentials_exits_2_with_one_line(
    s3_bucket, wrong_credentials, capsys
):
    storage = f"{s3_bucket}/prefix"
    for extra in ([], ["--no-index"]):
        assert main(["lineage", "derived", "A1", "--base", storage, *extra]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("bria-dagster: error:")]
        assert len(lines) == 1 and "Traceback" not in err
        assert storage in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]


# ------------------------------------------------------------------ the lineage index of s3


def s3_store(base: str, skus: int) -> None:
    """``skus`` products' lineage rows, one partition each (3 step tables per product)."""
    rows = []
    for i in range(skus):
        rows += [{**row, "partition": f"p{i:03d}"} for row in product_rows(f"sku-{i}")]
    write_store(base, records_to_frame(rows))


def test_the_index_of_an_s3_base_is_a_local_cache_reading_only_changed_tables(s3_bucket, tmp_path):
    base = f"{s3_bucket}/prefix"
    cache = tmp_path / "cache"
    s3_store(base, 3)
    first = lineage_index.sync(base, cache_dir=cache)
    assert len(first.read) == first.tables == 9 and first.records > 0
    path = lineage_database.index_path(base, cache)
    assert os.path.dirname(path) == str(cache / "lineage") and os.path.exists(path)
    assert lineage_index.sync(base, cache_dir=cache).read == []  # listed, nothing read
    # One table rewritten (same size is possible: the ETag tells), one removed.
    fs = fsspec.filesystem("s3")
    root = base.removeprefix("s3://")
    [expand] = fs.glob(f"{root}/tables/product_expansions/p001.parquet")
    frame = pd.read_parquet(f"s3://{expand}")
    frame.loc[0, "sku"] = "renamed"
    write_store(base, frame)
    fs.rm(f"{root}/tables/product_cutouts/p002.parquet")
    again = lineage_index.sync(base, cache_dir=cache)
    assert again.read == ["product_expansions/p001.parquet"]
    assert again.removed == ["product_cutouts/p002.parquet"]
    assert not [p for p in fs.find(s3_bucket.removeprefix("s3://")) if not p.endswith(".parquet")]


SYNC = """
import os, sys, time
from bria_dagster.lineage import index as lineage_index
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
stats = lineage_index.sync(sys.argv[1], cache_dir=sys.argv[2])
print(len(stats.read), stats.records)
"""


def test_two_processes_syncing_one_s3_index_at_once(s3_bucket, tmp_path, capsys):
    base = f"{s3_bucket}/prefix"
    s3_store(base, 20)  # 60 tables
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SYNC, base, str(cache), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(2.0)  # both imported and waiting
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    counts = [tuple(map(int, out.split())) for out, _ in results]
    # Each table was read exactly once between them: the second re-listed under the lock.
    assert sum(n for n, _ in counts) == 60
    assert counts[0][1] == counts[1][1] > 0
    conn = sqlite3.connect(lineage_database.index_path(base, cache))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM tables").fetchone() == (60,)
    conn.close()
    capsys.readouterr()
    output = sha("expand-sku-7-16:9")
    args = ["lineage", "trace", output, "--base", base, "--cache-dir", str(cache)]
    assert main([*args, "--format", "json"]) == 0
    captured = capsys.readouterr()
    hops = json.loads(captured.out)
    assert [h["step"] for h in hops] == ["expand", "replace", "remove", "source"]
    assert "indexed" not in captured.err  # the index was current: nothing re-read
    assert not fsspec.filesystem("s3").glob(f"{base.removeprefix('s3://')}/**/*.sqlite")
