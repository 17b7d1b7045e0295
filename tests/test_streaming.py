"""Streaming within a run: each product goes on to its next step as soon as it is ready."""

from pathlib import Path

import dagster as dg
import pandas as pd

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.records.tables import read_table
from tests.test_pipeline import product, write_catalog

BATCH = "b1"


def pipeline_for(folder: Path, **settings) -> ProductImagePipeline:
    return ProductImagePipeline(
        settings=PipelineSettings(
            catalog_dir=str(folder / "catalogs"), aspect_ratios=("1:1",), **settings
        ),
        storage=str(folder / "data"),
    )


def run(pipeline: ProductImagePipeline, bria: BriaResource, instance, selection=None):
    if BATCH not in instance.get_dynamic_partitions(pipeline.partitions_def.name):
        instance.add_dynamic_partitions(pipeline.partitions_def.name, [BATCH])
    return dg.materialize(
        pipeline.build_assets(),
        partition_key=BATCH,
        instance=instance,
        selection=selection,
        resources={"bria": bria, pipeline.io_manager_key: pipeline.io_manager()},
        raise_on_error=False,
    )


def table(pipeline: ProductImagePipeline, step: str) -> pd.DataFrame:
    frame = read_table(pipeline.store.table_path(pipeline.asset_key(step), BATCH))
    assert frame is not None
    return frame


def test_products_stream_through_the_steps_under_one_bound(tmp_path, fal_server):
    fal_server.configure(latency=0.3)
    rows = [{"sku": f"S{i:02d}", "image_url": product(tmp_path, f"S{i:02d}", i)} for i in range(12)]
    rows.append({"sku": "BAD", "image_url": "../images/missing.jpg"})  # fails at the source
    write_catalog(tmp_path, rows, batch=BATCH)
    pipeline = pipeline_for(tmp_path)
    bria = BriaResource(
        backend="fal", fal_key="test-key-stream", file_roots=[str(tmp_path)], max_concurrency=3
    )
    instance = dg.DagsterInstance.ephemeral()
    result = run(pipeline, bria, instance)
    assert result.success

    cutouts, scenes, expansions = (table(pipeline, s) for s in ("remove", "replace", "expand"))
    made = {name: f[f.status == "ok"] for name, f in (("cut", cutouts), ("scene", scenes))}
    # Streaming: the first scene was made before the last cutout (no wait for the step).
    assert made["scene"].created_at.min() < made["cut"].created_at.max()
    assert (expansions.status == "ok").sum() == 12
    # The failed product is recorded in every step; the others finished.
    assert list(expansions[expansions.sku == "BAD"].error_class) == ["UpstreamFailed"]
    # One bound for all steps together: never more than 3 requests at the fal queue.
    stats = fal_server.stats()
    assert stats["max_in_progress_by_key"]["test-key-stream"] <= 3
    assert stats["submissions"] == 36 and stats["duplicate_submissions"] == 0

    # One step alone: re-materialize the scenes with a new prompt; the cutouts stay.
    changed = pipeline_for(tmp_path, prompt_template="on dark slate")
    before = fal_server.stats()["submissions"]
    scenes_key = changed.asset_key("replace")
    again = run(changed, bria, instance, selection=[scenes_key])
    assert again.success
    keys = {e.asset_key for e in again.get_asset_materialization_events()}
    assert keys == {scenes_key}
    assert fal_server.stats()["submissions"] - before == 12  # only the 12 scenes
    rescened = table(changed, "replace")
    assert set(rescened[rescened.sku != "BAD"].status) == {"ok"}
    assert table(changed, "remove").equals(cutouts)  # untouched
