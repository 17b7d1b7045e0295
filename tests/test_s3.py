"""Storage on S3: a real S3 protocol server on loopback (moto), reached through s3fs
exactly as a user's ``s3://bucket/prefix`` is, endpoint and keys from the AWS variables."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import fsspec
import pandas as pd
import pytest

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.cli import main
from tests.s3_server import AWS_ENV
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
    s3_bucket, wrong_credentials, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    storage = f"{s3_bucket}/prefix"
    for extra in ([], ["--no-index"]):
        assert main(["lineage", "derived", "A1", "--base", storage, *extra]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("bria-dagster: error:")]
        assert len(lines) == 1 and "Traceback" not in err
        assert storage in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]
