"""The packshot step and the channel export inside a pipeline (local engine, offline).

Records and lineage like every step, reuse on an unchanged re-run (0 renders, 0 files
written), a changed sku rewrites only its files, per-channel compliance checks, export to a
local folder and to ``memory://``, custom presets from Python and from the component's
YAML, and the audit report linked from the batch's materialization.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import dagster as dg
import fsspec
import pandas as pd
import pytest
from PIL import Image

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.packshot import ChannelPreset
from bria_dagster.records.tables import read_table
from bria_dagster.steps.export import MANIFEST_COLUMNS
from bria_dagster.steps.packshot import PACKSHOT_ENDPOINT, PackshotSettings

from .test_pipeline import write_catalog

BATCH = "b1"
CHANNELS = ("amazon_main", "small_webp")
SMALL = ChannelPreset(
    name="small_webp",
    width=400,
    height=400,
    background="#F4F4F4",
    fill=0.8,
    min_fill=0.7,  # a soft matte's fringe shows more or less with the product's colour
    max_fill=0.9,
    format="webp",
    quality=85,
    min_long_side=300,
)


def photo(folder: Path, sku: str, seed: int, category: str = "white_studio") -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / f"{sku}.jpg").write_bytes(
        make_product_photo(category, seed, (160, 144))[0]
    )
    return f"../images/{sku}.jpg"


def make_pipeline(folder: Path, *, export_to: str | None = None) -> ProductImagePipeline:
    return ProductImagePipeline(
        name="shop",
        settings=PipelineSettings(
            catalog_dir=str(folder / "catalogs"),
            steps=("remove",),
            packshots=PackshotSettings(
                channels=CHANNELS,
                presets={"small_webp": SMALL},
                export_to=export_to,
                workers=2,
            ),
        ),
        storage=str(folder / "data"),
    )


def materialize(pipeline: ProductImagePipeline, instance: dg.DagsterInstance):
    instance.add_dynamic_partitions(pipeline.partitions_def.name, [BATCH])
    result = dg.materialize(
        pipeline.build_assets(),
        partition_key=BATCH,
        instance=instance,
        resources={
            "bria": BriaResource(file_roots=[str(Path(pipeline.settings.catalog_dir).parent)]),
            pipeline.io_manager_key: pipeline.io_manager(),
        },
    )
    assert result.success
    return result


def materialization(result, name: str) -> dict:
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.asset_key.path[-1] == name:
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    raise AssertionError(f"no materialization of {name}")


def manifest(fs: fsspec.AbstractFileSystem, path: str) -> list[dict[str, str]]:
    with fs.open(path, "rb") as fh:
        return list(csv.DictReader(io.StringIO(fh.read().decode())))


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    write_catalog(
        tmp_path,
        [
            {"sku": "P1", "image_url": photo(tmp_path, "P1", 1)},
            {"sku": "P2", "image_url": photo(tmp_path, "P2", 2, "colored")},
            {"sku": "P3", "image_url": "../images/missing.jpg"},  # fails at source
        ],
    )
    return tmp_path


def test_packshots_are_records_with_lineage_and_the_export_is_incremental(catalog: Path):
    pipeline = make_pipeline(catalog)
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(pipeline, instance)

    shots = read_table(pipeline.store.table_path(pipeline.asset_key("packshot"), BATCH))
    cutouts = read_table(pipeline.store.table_path(pipeline.asset_key("remove"), BATCH))
    assert shots is not None and cutouts is not None
    assert sorted(shots["variant"].unique()) == sorted(CHANNELS)
    ok = shots[shots["status"] == "ok"]
    assert sorted(ok["sku"].unique()) == ["P1", "P2"] and len(ok) == 4
    by_sku = cutouts.set_index("sku")["image_sha256"]
    for row in ok.to_dict("records"):  # parent = the cutout; parameters = the resolved preset
        assert row["parent_sha256"] == by_sku[row["sku"]]
        assert row["endpoint_id"] == PACKSHOT_ENDPOINT and row["cost_usd"] == 0
        assert f'"name":"{row["variant"]}"' in row["parameters"]
    failed = shots[shots["sku"] == "P3"]
    assert set(failed["status"]) == {"failed"} and len(failed) == 2  # one per channel
    assert set(failed["error_class"]) == {"ParentFailedError"}

    webp = ok[ok["variant"] == "small_webp"].iloc[0]
    image = Image.open(io.BytesIO(pipeline.store.image_store().get(webp["image_sha256"])))
    assert (image.format, image.size) == ("WEBP", (400, 400))

    checks = {
        e.check_name: e.passed
        for e in first.get_asset_check_evaluations()
        if e.asset_key == pipeline.asset_key("packshot")
    }
    assert checks["compliance_amazon_main"] and checks["compliance_small_webp"]

    export = materialization(first, "channel_exports")
    assert export["files_written"] == 4
    fs = fsspec.filesystem("file")
    folder = catalog / "data" / "exports" / BATCH
    rows = manifest(fs, str(folder / "amazon_main" / "manifest.csv"))
    assert [r["sku"] for r in rows] == ["P1", "P2"]
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert rows[0]["file"] == "P1_amazon_main.jpg"
    assert (folder / "amazon_main" / "P1_amazon_main.jpg").stat().st_size == int(rows[0]["bytes"])
    assert rows[0]["source_sha256"] and rows[0]["run_id"] == first.run_id
    assert (folder / "small_webp" / "P2_small_webp.webp").exists()

    # Unchanged re-run: every packshot reused (nothing rendered), nothing written.
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    again = materialize(pipeline, instance)
    meta = materialization(again, "product_packshots")
    assert meta["rows_reused"] == 4 and meta["rows_ok"] == 0 and meta["images_per_s"] == 0
    assert materialization(again, "channel_exports")["files_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps

    # A changed sku rewrites only its own files (and the manifests that list it).
    write_catalog(  # P2 has a new photo (a new URL: sources are re-fetched when they change)
        catalog,
        [
            {"sku": "P1", "image_url": "../images/P1.jpg"},
            {"sku": "P2", "image_url": photo(catalog, "P2-new", 9, "colored")},
            {"sku": "P3", "image_url": "../images/missing.jpg"},
        ],
    )
    third = materialize(pipeline, instance)
    export = materialization(third, "channel_exports")
    assert export["files_written"] == 2
    assert export["amazon_main.written"] == 1 and export["amazon_main.unchanged"] == 1
    for path, stamp in stamps.items():
        changed = path.stat().st_mtime_ns != stamp
        assert changed == (path.name.startswith("P2_") or path.name == "manifest.csv"), path


def test_export_to_memory_and_the_audit_report_is_linked(catalog: Path):
    pipeline = make_pipeline(catalog, export_to="memory://shop-exports")
    result = materialize(pipeline, dg.DagsterInstance.ephemeral())
    fs = fsspec.filesystem("memory")
    rows = manifest(fs, f"/shop-exports/{BATCH}/small_webp/manifest.csv")
    assert [r["file"] for r in rows] == ["P1_small_webp.webp", "P2_small_webp.webp"]
    assert fs.cat_file(f"/shop-exports/{BATCH}/small_webp/P1_small_webp.webp")[:4] == b"RIFF"

    report = materialization(result, "audit_report")
    path = Path(str(report["audit_report"]))
    assert path.exists() and path.suffix == ".html"
    html = path.read_text()
    assert "P1" in html and "small_webp" in html


def test_a_non_compliant_packshot_is_a_failed_row_and_fails_its_channel_check(catalog: Path):
    strict = SMALL.model_copy(update={"name": "tiny_limit", "max_bytes": 300})
    pipeline = ProductImagePipeline(
        name="strict",
        settings=PipelineSettings(
            catalog_dir=str(catalog / "catalogs"),
            steps=("remove",),
            packshots=PackshotSettings(channels=("tiny_limit",), presets={"tiny_limit": strict}),
        ),
        storage=str(catalog / "data"),
    )
    result = materialize(pipeline, dg.DagsterInstance.ephemeral())
    shots = read_table(pipeline.store.table_path(pipeline.asset_key("packshot"), BATCH))
    bad = shots[shots["error_class"] == "PackshotComplianceError"]
    assert sorted(bad["sku"]) == ["P1", "P2"]
    message = bad["error_message"].iloc[0]
    assert "max_bytes" in message and "tiny_limit" in message
    assert bad["image_sha256"].notna().all()  # the image is kept, to be looked at
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    check = evaluations["compliance_tiny_limit"]
    assert not check.passed and check.metadata["failing"].value == 2
    assert materialization(result, "channel_exports")["tiny_limit.files"] == 0


def test_backdrop_spill_fails_the_channel_check_naming_sku_channel_and_figure(tmp_path: Path):
    # a box on saturated green paper: its local cutout keeps green in the edge; rendered
    # as is (decontaminate off) the packshot shows a green rim, by default it does not
    (tmp_path / "images").mkdir()
    green = make_product_photo("colored", 2, (640, 640), shape="box", backdrop=(30, 190, 70))
    (tmp_path / "images" / "G1.jpg").write_bytes(green[0])
    write_catalog(tmp_path, [{"sku": "G1", "image_url": "../images/G1.jpg"}])
    pipeline = ProductImagePipeline(
        name="spill",
        settings=PipelineSettings(
            catalog_dir=str(tmp_path / "catalogs"),
            steps=("remove",),
            packshots=PackshotSettings(
                channels=("amazon_main", "raw_main"),
                presets={"raw_main": {"extends": "amazon_main", "decontaminate": False}},
            ),
        ),
        storage=str(tmp_path / "data"),
    )
    result = materialize(pipeline, dg.DagsterInstance.ephemeral())
    shots = read_table(pipeline.store.table_path(pipeline.asset_key("packshot"), BATCH))
    status = dict(zip(shots["variant"], shots["status"], strict=True))
    assert status == {"amazon_main": "ok", "raw_main": "failed"}
    message = shots.set_index("variant").loc["raw_main", "error_message"]
    assert message.startswith("G1 on raw_main: spill: measured 0.")
    assert "limit <= 0.05 of the product's outline" in message
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["compliance_amazon_main"].passed
    failed = evaluations["compliance_raw_main"]
    assert not failed.passed and failed.metadata["failing"].value == 1
    assert "G1 on raw_main: spill" in failed.metadata["failures"].value


def test_unknown_channel_fails_when_definitions_load(tmp_path: Path):
    pipeline = ProductImagePipeline(
        settings=PipelineSettings(packshots=PackshotSettings(channels=("amazn_main",))),
        storage=str(tmp_path),
    )
    with pytest.raises(Exception, match="amazon_main"):
        pipeline.build_assets()


def test_filename_template_must_name_the_sku():
    with pytest.raises(ValueError, match="sku"):
        PackshotSettings(channels=("amazon_main",), filename_template="{channel}.{ext}")


def test_packshot_settings_from_yaml_mapping():
    settings = PackshotSettings.model_validate(
        {
            "channels": ["amazon_main", "kiosk"],
            "presets": {"kiosk": {"width": 800, "height": 600, "format": "png"}},
        }
    )
    presets = settings.resolved()
    assert [p.name for p in presets] == ["amazon_main", "kiosk"]
    assert (presets[1].width, presets[1].ext) == (800, "png")
    with pytest.raises(ValueError, match="widht"):
        PackshotSettings.model_validate(
            {"channels": ["k"], "presets": {"k": {"widht": 800, "height": 600}}}
        )


def test_frames_stay_readable_by_pandas(catalog: Path):
    pipeline = make_pipeline(catalog)
    materialize(pipeline, dg.DagsterInstance.ephemeral())
    frame = pd.read_parquet(pipeline.store.table_path(pipeline.asset_key("packshot"), BATCH))
    assert set(frame["step"]) == {"packshot"}
