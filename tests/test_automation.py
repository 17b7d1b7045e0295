"""Sensor idempotency, the retry schedule, and the asset checks on each materialization."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.orchestration.automation import build_catalog_sensor, build_retry_schedule
from bria_dagster.steps.settings import CheckSettings
from tests.test_pipeline import materialize, product, write_catalog

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def landing(tmp_path: Path) -> Path:
    write_catalog(tmp_path, [{"sku": "S1", "image_url": product(tmp_path, "S1", 1)}], batch="b1")
    write_catalog(tmp_path, [{"sku": "S2", "image_url": product(tmp_path, "S2", 2)}], batch="b2")
    return tmp_path / "catalogs"


def tick(sensor, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_sensor_adds_each_batch_once_whatever_happens_to_its_cursor(tmp_path):
    folder = landing(tmp_path)
    pipeline = ProductImagePipeline(settings=PipelineSettings(catalog_dir=str(folder)))
    sensor = build_catalog_sensor(pipeline)
    instance = dg.DagsterInstance.ephemeral()

    first = tick(sensor, instance)
    assert sorted(r.partition_key for r in first.run_requests) == ["b1", "b2"]
    assert sorted(instance.get_dynamic_partitions("product_images_batches")) == ["b1", "b2"]

    again = tick(sensor, instance, first.cursor)  # same files seen twice
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    restarted = tick(sensor, instance, None)  # cursor lost / reset
    assert restarted.run_requests == [] and restarted.dynamic_partitions_requests == []
    rebuilt = build_catalog_sensor(pipeline)  # code reloaded, a new sensor with no cursor
    assert tick(rebuilt, instance).run_requests == []

    write_catalog(tmp_path, [{"sku": "S3", "image_url": product(tmp_path, "S3", 3)}], batch="b3")
    third = tick(sensor, instance, restarted.cursor)
    assert [r.partition_key for r in third.run_requests] == ["b3"]

    # A changed file is reported, not re-run.
    (folder / "b1.csv").write_text((folder / "b1.csv").read_text() + "S9,../images/S1.jpg\n")
    changed = tick(sensor, instance, third.cursor)
    assert changed.run_requests == []
    [event] = changed.asset_events
    assert event.partition == "b1" and "changed" in event.description
    assert tick(sensor, instance, changed.cursor).asset_events == []  # reported once


def test_sensor_reports_a_change_even_with_a_lost_cursor(tmp_path):
    folder = landing(tmp_path)
    (folder / "b2.csv").unlink()
    settings = PipelineSettings(catalog_dir=str(folder), steps=("remove",))
    _, instance = materialize(tmp_path, settings=settings)
    (folder / "b1.csv").write_text((folder / "b1.csv").read_text() + "S9,../images/S1.jpg\n")
    out = tick(build_catalog_sensor(ProductImagePipeline(settings=settings)), instance, None)
    assert out.run_requests == []
    assert [e.partition for e in out.asset_events] == ["b1"]


def test_retry_schedule_requests_only_partitions_with_failed_rows(tmp_path):
    rows = [
        {"sku": "R1", "image_url": product(tmp_path, "R1", 1)},
        {"sku": "R2", "image_url": "../images/not-yet.jpg"},
    ]
    write_catalog(tmp_path, rows)
    storage = str(tmp_path / "data")
    settings = PipelineSettings(catalog_dir=str(tmp_path / "catalogs"), steps=("remove",))
    schedule = build_retry_schedule(ProductImagePipeline(settings=settings, storage=storage))
    (tmp_path / "dagster_home").mkdir()
    # Not `with instance:`: entering an instance sets a process-wide context variable
    # that outlives the test and breaks later materializations.
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home"))
    try:
        materialize(tmp_path, settings=settings, storage=storage, instance=instance)
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=NOW)
        requests = schedule(context)
        assert [r.partition_key for r in requests] == ["b1"]

        (tmp_path / "images" / "not-yet.jpg").write_bytes(make_product_photo("colored", 5)[0])
        materialize(tmp_path, settings=settings, storage=storage, instance=instance)
        skip = schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=NOW))
        assert isinstance(skip, dg.SkipReason) and "nothing to retry" in skip.skip_message
    finally:
        instance.dispose()


def test_asset_checks_run_with_every_materialization(tmp_path):
    rows = [
        {"sku": "C1", "image_url": product(tmp_path, "C1", 1)},
        {"sku": "C2", "image_url": product(tmp_path, "C2", 2, "colored")},
        {"sku": "C3", "image_url": "../images/absent.jpg"},
    ]
    write_catalog(tmp_path, rows)
    result, _ = materialize(tmp_path)
    checks = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    assert checks[("product_cutouts", "every_sku_accounted")].passed
    assert checks[("product_cutouts", "outputs_decode")].passed
    assert checks[("product_cutouts", "cutouts_have_alpha")].passed
    assert checks[("product_expansions", "outputs_decode")].passed
    rate = checks[("product_cutouts", "failure_rate")]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN  # 1 of 3 failed
    assert checks[("product_scenes", "within_budget")].passed


def test_cutout_alpha_check_fails_for_an_empty_matte(tmp_path):
    from bria_dagster.steps.settings import CheckSettings

    blank = tmp_path / "images" / "blank.png"
    blank.parent.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (64, 64), (255, 255, 255)).save(blank)  # nothing to cut out
    write_catalog(tmp_path, [{"sku": "E1", "image_url": "../images/blank.png"}])
    settings = PipelineSettings(
        catalog_dir=str(tmp_path / "catalogs"), steps=("remove",), checks=CheckSettings()
    )
    storage = str(tmp_path / "data")
    pipeline = ProductImagePipeline(settings=settings, storage=storage)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, ["b1"])
    result = dg.materialize(
        pipeline.build_assets(),
        partition_key="b1",
        instance=instance,
        resources={
            "bria": BriaResource(backend="local", file_roots=[str(tmp_path)]),
            pipeline.io_manager_key: pipeline.io_manager(),
        },
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    source = pd.read_parquet(pipeline.store.table_path(pipeline.asset_key("source"), "b1"))
    source = source.iloc[0]
    assert source.content_type == "image/png" and source.image_uri.endswith(".png")
    cutouts = pd.read_parquet(pipeline.store.table_path(pipeline.asset_key("remove"), "b1"))
    if (cutouts.status == "ok").any():
        assert not checks["cutouts_have_alpha"].passed
    else:  # the engine itself refused a matte-less image: still a recorded failure
        assert cutouts.error_message.notna().all()


def _run_with_failures(tmp_path: Path, severity: str) -> dg.ExecuteInProcessResult:
    rows = [
        {"sku": "K1", "image_url": product(tmp_path, "K1", 1)},
        {"sku": "K2", "image_url": "../images/gone.jpg"},
        {"sku": "K3", "image_url": "../images/gone-too.jpg"},
    ]
    write_catalog(tmp_path, rows)
    pipeline = ProductImagePipeline(
        settings=PipelineSettings(
            catalog_dir=str(tmp_path / "catalogs"),
            # 2 of the 3 products fail: under fail_run_above 0.9 the run's outcome is the
            # failure_rate check's alone (tests/test_pipeline.py tests the batch verdict).
            checks=CheckSettings(
                max_failure_rate=0.1, failure_severity=severity, fail_run_above=0.9
            ),
        ),
        storage=str(tmp_path / "data"),
    )
    defs = pipeline.build_definitions(
        BriaResource(backend="local", file_roots=[str(tmp_path)]), operations=False
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, ["b1"])
    return defs.resolve_job_def(pipeline.job_name).execute_in_process(
        partition_key="b1", instance=instance, raise_on_error=False
    )


def _materialized(result: dg.ExecuteInProcessResult) -> list[str]:
    return sorted(
        e.asset_key.path[-1] for e in result.get_asset_materialization_events() if e.asset_key
    )


def test_an_error_severity_failure_rate_blocks_the_steps_after_it_and_fails_the_run(tmp_path):
    result = _run_with_failures(tmp_path, "ERROR")
    assert not result.success
    assert _materialized(result) == ["catalog_batch"]  # cutouts, scenes, expansions: not run
    [rate] = [e for e in result.get_asset_check_evaluations() if e.check_name == "failure_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR


def test_a_warn_severity_failure_rate_lets_the_run_go_on(tmp_path):
    result = _run_with_failures(tmp_path, "WARN")
    assert result.success
    assert _materialized(result) == [
        "audit_report",
        "catalog_batch",
        "product_cutouts",
        "product_expansions",
        "product_scenes",
    ]


def test_every_check_has_a_description_and_only_an_error_failure_rate_blocks():
    for severity in ("WARN", "ERROR"):
        pipeline = ProductImagePipeline(
            settings=PipelineSettings(checks=CheckSettings(failure_severity=severity))
        )
        specs = [spec for a in pipeline.build_assets() for spec in a.check_specs]
        assert len(specs) == 15
        assert all(spec.description and len(spec.description) > 30 for spec in specs)
        blocking = {spec.name for spec in specs if spec.blocking}
        assert blocking == ({"failure_rate"} if severity == "ERROR" else set())
