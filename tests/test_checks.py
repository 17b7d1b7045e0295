"""Asset checks describe the batch as it stands: a fully reused re-run reports the figures
of the run that made the images (no plotted figure drops to 0 because rows were reused),
and each result's description says how many rows were made by the run and how many reused.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from bria_dagster import PipelineSettings, ProductImagePipeline
from bria_dagster.orchestration.checks import evaluate_checks
from bria_dagster.records.schema import reused_record
from bria_dagster.records.store import ImageStore
from bria_dagster.records.tables import read_table, records_to_frame
from bria_dagster.steps.packshot import PackshotSettings
from bria_dagster.steps.settings import CheckSettings

from .test_packshot_pipeline import CHANNELS, SMALL, photo
from .test_pipeline import BATCH, materialize, write_catalog

STEPS = {
    "product_cutouts": "remove",
    "product_scenes": "replace",
    "product_expansions": "expand",
    "product_packshots": "packshot",
}


def _evaluations(result: dg.ExecuteInProcessResult) -> dict:
    """(asset name, check name) -> the run's check evaluation."""
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def _numbers(evaluation) -> dict[str, float]:
    """The numeric (plotted) metadata of a check evaluation."""
    return {
        k: v.value
        for k, v in evaluation.metadata.items()
        if isinstance(v, dg.IntMetadataValue | dg.FloatMetadataValue)
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    """A batch (two good skus, one missing photo) materialized twice, unchanged: the second
    run reuses every image of the first. Every step and two packshot channels."""
    folder = tmp_path_factory.mktemp("checks")
    write_catalog(
        folder,
        [
            {"sku": "P1", "image_url": photo(folder, "P1", 1), "prompt": "on oak wood"},
            {"sku": "P2", "image_url": photo(folder, "P2", 2, "colored"), "prompt": ""},
            {"sku": "P3", "image_url": "../images/missing.jpg", "prompt": ""},
        ],
    )
    settings = PipelineSettings(
        catalog_dir=str(folder / "catalogs"),
        aspect_ratios=("1:1",),
        checks=CheckSettings(max_failure_rate=0.5),
        packshots=PackshotSettings(channels=CHANNELS, presets={"small_webp": SMALL}, workers=2),
    )
    result, instance = materialize(folder, settings=settings)
    again, _ = materialize(folder, settings=settings, instance=instance)
    pipeline = ProductImagePipeline(settings=settings, storage=str(folder / "data"))
    return pipeline, _evaluations(result), _evaluations(again)


def test_a_fully_reused_rerun_reports_the_first_runs_figures(two_runs):
    pipeline, first, second = two_runs
    for step in STEPS.values():  # the second run made nothing: its tables are kept
        frame = read_table(pipeline.store.table_path(pipeline.asset_key(step), BATCH))
        assert set(frame["status"]) == {"ok", "failed"}, step

    assert set(first) == set(second)
    assert {check for _, check in second} >= {
        "every_sku_accounted",
        "failure_rate",
        "outputs_decode",
        "within_budget",
        "cutouts_have_alpha",
        "compliance_amazon_main",
        "compliance_small_webp",
    }
    for key, evaluation in second.items():
        assert evaluation.passed == first[key].passed, key
        assert _numbers(evaluation) == _numbers(first[key]), key

    # The figures are those of the images, not zeros: the cutouts were all re-read.
    alpha = second[("product_cutouts", "cutouts_have_alpha")]
    assert alpha.passed
    assert _numbers(alpha)["checked"] == 2
    assert 0.05 < _numbers(alpha)["median_foreground"] < 0.95
    assert "0 made by this run, 2 reused" in alpha.description
    for step in STEPS:
        decoded = second[(step, "outputs_decode")]
        made = 4 if step == "product_packshots" else 2  # 2 skus; x 2 channels for packshots
        assert decoded.passed and _numbers(decoded)["decoded"] == made, step
        assert f"{made} image(s) read: 0 made by this run, {made} reused" in decoded.description
        before = first[(step, "outputs_decode")].description
        assert f"{made} image(s) read: {made} made by this run, 0 reused" in before
    rate = second[("product_cutouts", "failure_rate")]
    assert _numbers(rate)["failed_rows"] == 1 and "2 reused from earlier runs" in rate.description
    shots = second[("product_packshots", "compliance_amazon_main")]
    assert shots.passed and _numbers(shots)["checked"] == 2
    assert "0 made by this run, 2 reused (checked when made)" in shots.description


def _cutout_row(**fields) -> dict:
    """One product_cutouts record of run-1 in BATCH, with ``fields`` set."""
    return {
        "partition": BATCH,
        "step": "remove",
        "variant": "default",
        "root_source_uri": "file:///x.jpg",
        "parameters": "{}",
        "cost_usd": 0.0,
        "duration_s": 0.0,
        "attempts": 1,
        "run_id": "run-1",
        "asset_key": "product_images/product_cutouts",
        "code_version": "0",
        "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
        "catalog_row": "{}",
        **fields,
    }


def test_no_image_to_measure_gives_no_median_rather_than_zero(tmp_path):
    store = ImageStore(str(tmp_path / "images"))
    failed = _cutout_row(record_id="r1", sku="F1", status="failed", error_class="FalRequestError")
    results = evaluate_checks(
        dg.AssetKey(["product_images", "product_cutouts"]),
        "remove",
        records_to_frame([failed]),
        ["F1"],
        store,
        CheckSettings(),
    )
    alpha = next(r for r in results if r.check_name == "cutouts_have_alpha")
    assert "median_foreground" not in alpha.metadata
    assert alpha.metadata["checked"].value == 0
    assert "no cutout to measure" in alpha.description


def test_reused_rows_are_sampled_after_the_rows_the_run_made(tmp_path):
    """With decode_sample 1 and one new and one reused cutout, the new one is read."""
    from PIL import Image

    from bria_dagster.client.images import encode_png

    store = ImageStore(str(tmp_path / "images"))
    rows = []
    for sku, share in (("N1", 0.25), ("R1", 0.5)):
        img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
        img.paste((200, 0, 0, 255), (0, 0, 8, int(8 * share)))
        stored = store.put(encode_png(img), "image/png")
        rows.append(
            _cutout_row(
                record_id=sku,
                sku=sku,
                status="ok",
                image_uri=stored.uri,
                image_sha256=stored.sha256,
                width=8,
                height=8,
            )
        )
    rows = [reused_record(rows[1], "run-2"), {**rows[0], "run_id": "run-2"}]  # reused first
    results = evaluate_checks(
        dg.AssetKey(["product_images", "product_cutouts"]),
        "remove",
        records_to_frame(rows),
        ["N1", "R1"],
        store,
        CheckSettings(decode_sample=1),
    )
    alpha = next(r for r in results if r.check_name == "cutouts_have_alpha")
    assert alpha.metadata["median_foreground"].value == 0.25
    assert "1 image(s) read: 1 made by this run, 0 reused" in alpha.description
