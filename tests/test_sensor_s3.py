"""The catalog sensor on an S3 landing folder (the loopback moto server): it decides from
the listing (size + ETag), reads only new or changed files, and a lost cursor neither
re-adds, re-runs nor floods change reports."""

from __future__ import annotations

import dagster as dg
import fsspec

from bria_dagster import PipelineSettings, ProductImagePipeline
from bria_dagster.orchestration.automation import build_catalog_sensor
from bria_dagster.testing import counting_s3_requests
from tests.test_automation import tick

FILES = 36


def batch_csv(i: int, extra: str = "") -> bytes:
    return f"sku,image_url\nS{i}a,https://img.example/{i}a.jpg\nS{i}b,https://img.example/{i}b.jpg\n{extra}".encode()


def landing(bucket: str) -> str:
    fs = fsspec.filesystem("s3")
    folder = f"{bucket}/landing"
    fs.pipe({f"{folder}/b{i:03d}.csv": batch_csv(i) for i in range(FILES)})
    return folder


def sensor_for(folder: str) -> dg.SensorDefinition:
    return build_catalog_sensor(ProductImagePipeline(settings=PipelineSettings(catalog_dir=folder)))


def test_an_unchanged_tick_on_s3_reads_no_object_body(s3_bucket):
    folder = landing(s3_bucket)
    sensor, instance = sensor_for(folder), dg.DagsterInstance.ephemeral()
    with counting_s3_requests() as first_calls:
        first = tick(sensor, instance)
    assert len(first.run_requests) == FILES and first_calls["get_object"] == FILES
    with counting_s3_requests() as calls:
        again = tick(sensor, instance, first.cursor)
    assert again.run_requests == [] and again.asset_events == []
    assert calls["get_object"] == 0 and calls["head_object"] == 0
    assert calls["list_objects_v2"] >= 1  # it did look
    assert len(first.cursor) < 20 * FILES  # a few bytes per file, not a sha per file


def test_a_changed_s3_file_is_read_and_reported_once_a_new_one_run(s3_bucket):
    folder = landing(s3_bucket)
    sensor, instance = sensor_for(folder), dg.DagsterInstance.ephemeral()
    first = tick(sensor, instance)
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{folder}/b007.csv", batch_csv(7, "S7c,https://img.example/7c.jpg\n"))
    fs.pipe(f"{folder}/new.csv", batch_csv(99))
    with counting_s3_requests() as calls:
        changed = tick(sensor, instance, first.cursor)
    assert calls["get_object"] == 2  # the changed file and the new one, nothing else
    assert [r.partition_key for r in changed.run_requests] == ["new"]
    [event] = changed.asset_events
    assert event.partition == "b007" and "changed" in event.description
    with counting_s3_requests() as calls:
        after = tick(sensor, instance, changed.cursor)
    assert after.asset_events == [] and after.run_requests == [] and calls["get_object"] == 0


def test_a_lost_cursor_on_s3_re_adds_nothing_and_reports_only_real_changes(s3_bucket):
    folder = landing(s3_bucket)
    pipeline = ProductImagePipeline(settings=PipelineSettings(catalog_dir=folder))
    sensor, instance = build_catalog_sensor(pipeline), dg.DagsterInstance.ephemeral()
    first = tick(sensor, instance)
    # Two batches ran: their materializations recorded the sha256 they read.
    shas = {r.partition_key: r.run_key.split(":", 1)[1] for r in first.run_requests}
    source = pipeline.asset_key("source")
    for batch in ("b001", "b002"):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                source, partition=batch, metadata={"catalog_sha256": shas[batch]}
            )
        )
    fsspec.filesystem("s3").pipe(f"{folder}/b002.csv", batch_csv(2, "S2c,x.jpg\n"))
    with counting_s3_requests() as calls:
        lost = tick(sensor, instance, None)
    assert lost.run_requests == [] and lost.dynamic_partitions_requests == []
    assert [e.partition for e in lost.asset_events] == ["b002"]  # not one per batch
    assert calls["get_object"] == 2  # only the materialized batches are checked
    with counting_s3_requests() as calls:
        again = tick(sensor, instance, lost.cursor)
    assert again.asset_events == [] and again.run_requests == [] and calls["get_object"] == 0
