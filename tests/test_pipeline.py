"""End-to-end materializations of a catalog batch partition (local engine and fal server)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import get_args

import dagster as dg
import fsspec
import pandas as pd
import pytest

from bria_dagster import (
    BriaResource,
    PipelineSettings,
    ProductImagePipeline,
    build_definitions,
    derived,
    load_records,
    trace,
)
from bria_dagster.client.backends.local import LocalBackend
from bria_dagster.client.contracts.expand import AspectRatio, AspectRatioName
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import ConfigurationError
from bria_dagster.lineage.report import write_audit_report
from bria_dagster.orchestration.automation import partitions_needing_retry
from bria_dagster.records.schema import COLUMNS, NOOP_BACKEND
from bria_dagster.steps.settings import CheckSettings

BATCH = "b1"


def write_catalog(folder: Path, rows: list[dict[str, str]], batch: str = BATCH) -> Path:
    (folder / "catalogs").mkdir(parents=True, exist_ok=True)
    path = folder / "catalogs" / f"{batch}.csv"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def product(
    folder: Path,
    sku: str,
    seed: int,
    category: str = "white_studio",
    size: tuple[int, int] = (128, 112),
) -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    image = folder / "images" / f"{sku}.jpg"
    image.write_bytes(make_product_photo(category, seed, size)[0])
    return f"../images/{sku}.jpg"


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    rows = [
        {"sku": "A1", "image_url": product(tmp_path, "A1", 1), "prompt": "", "color": "red"},
        {"sku": "A2", "image_url": product(tmp_path, "A2", 2, "colored"), "prompt": "on oak wood"},
        {"sku": "A3", "image_url": product(tmp_path, "A3", 3, "gray_gradient"), "prompt": ""},
        {"sku": "A3", "image_url": product(tmp_path, "A3b", 4), "prompt": ""},  # duplicate sku
        {"sku": "A4", "image_url": "../images/missing.jpg", "prompt": ""},  # 404-like
    ]
    write_catalog(tmp_path, rows)
    return tmp_path


class CountingBackends:
    """Counts backend calls by wrapping LocalBackend.run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        original = LocalBackend.run

        async def run(backend, request, **kwargs):
            self.calls.append(request.endpoint_id)
            return await original(backend, request, **kwargs)

        monkeypatch.setattr(LocalBackend, "run", run)


def materialize(
    folder: Path,
    *,
    storage: str | None = None,
    settings=None,
    bria=None,
    instance=None,
    succeed: bool = True,
    selection: list[str] | None = None,
):
    """One partition of ``folder``'s catalog; the run must succeed unless ``succeed`` is
    False (then its result is returned as it is). ``selection``: the steps to select."""
    storage = storage or str(folder / "data")
    settings = settings or PipelineSettings(
        catalog_dir=str(folder / "catalogs"), aspect_ratios=("1:1", "4:5")
    )
    bria = bria or BriaResource(backend="local", file_roots=[str(folder)])
    pipeline = ProductImagePipeline(settings=settings, storage=storage)
    instance = instance or dg.DagsterInstance.ephemeral()
    if BATCH not in instance.get_dynamic_partitions(pipeline.partitions_def.name):
        instance.add_dynamic_partitions(pipeline.partitions_def.name, [BATCH])
    result = dg.materialize(
        pipeline.build_assets(),
        partition_key=BATCH,
        instance=instance,
        resources={"bria": bria, pipeline.io_manager_key: pipeline.io_manager()},
        selection=[pipeline.asset_key(s) for s in selection] if selection else None,
        raise_on_error=succeed,
    )
    assert result.success == succeed
    return result, instance


def fal_resource(storage: str, folder: Path, **settings) -> BriaResource:
    """BriaResource on the fal test server, inputs from ``folder``, quick polling (single
    calls journal under ``storage``)."""
    return BriaResource(
        backend="fal",
        fal_key="test-key-0",
        journal_path=f"{storage}/single.sqlite",
        file_roots=[str(folder)],
        poll_interval_s=0.02,
        **settings,
    )


def table(storage: str, asset: str) -> pd.DataFrame:
    with fsspec.open(f"{storage}/tables/product_images__{asset}/{BATCH}.parquet", "rb") as fh:
        return pd.read_parquet(fh)


def meta(result, asset: str) -> dict:
    key = dg.AssetKey(["product_images", asset])
    [mat] = [
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key
    ]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def test_local_materialization_records_every_row_with_lineage(catalog, monkeypatch):
    counter = CountingBackends(monkeypatch)
    result, _ = materialize(catalog)
    storage = str(catalog / "data")
    sources = table(storage, "catalog_batch")
    assert list(sources.columns) == list(COLUMNS)
    by_sku = sources.groupby("sku")["status"].apply(list).to_dict()
    assert by_sku["A1"] == ["ok"] and by_sku["A2"] == ["ok"]
    assert by_sku["A4"] == ["failed"]  # missing file: a failed record, not a lost row
    assert "A3" in by_sku and "failed" in by_sku["A3"]  # the duplicate row is recorded
    dup = sources[(sources.sku == "A3") & (sources.status == "failed")].iloc[0]
    assert "duplicate sku" in dup.error_message and "row 4" in dup.error_message

    cutouts = table(storage, "product_cutouts")
    scenes = table(storage, "product_scenes")
    expansions = table(storage, "product_expansions")
    assert (cutouts[cutouts.sku == "A1"].status == "ok").all()
    assert set(expansions[expansions.status == "ok"].variant) == {"scene@1:1", "scene@4:5"}
    a4 = expansions[expansions.sku == "A4"]
    assert (a4.error_class == "UpstreamFailed").all()
    assert sorted(a4.variant) == ["scene@1:1", "scene@4:5"]  # one failed row per ratio
    assert set(sources.record_id.duplicated()) == {False}
    assert counter.calls.count("fal-ai/bria/background/remove") == 3
    assert counter.calls.count("fal-ai/bria/background/replace") == 3
    assert counter.calls.count("fal-ai/bria/expand") == 6

    row = expansions[(expansions.sku == "A2") & (expansions.variant == "scene@4:5")].iloc[0]
    scene = scenes[scenes.sku == "A2"].iloc[0]
    cut = cutouts[cutouts.sku == "A2"].iloc[0]
    source = sources[sources.sku == "A2"].iloc[0]
    assert row.parent_sha256 == scene.image_sha256
    assert scene.parent_sha256 == cut.image_sha256 and cut.parent_sha256 == source.image_sha256
    assert row.root_source_sha256 == source.image_sha256
    assert row.root_source_uri.endswith("images/A2.jpg")
    assert json.loads(row.parameters)["aspect_ratio"] == "4:5"
    assert json.loads(scene.parameters)["prompt"] == "on oak wood"
    assert row.backend == "local" and row.run_id == result.run_id
    assert row.asset_key == "product_images/product_expansions" and row.partition == BATCH
    assert (row.width, row.height) == (256, 320) or row.width * 5 == row.height * 4
    assert Path(row.image_uri).exists()

    m = meta(result, "product_scenes")
    assert m["rows_ok"] == 3 and m["rows_failed"] == 2 and m["backend_calls"] == 3
    assert m["bria.replace.calls"] == 3 and "preview" in m and "images_per_s" in m
    assert "table" in meta(result, "product_expansions")

    chain = trace(row.image_sha256, storage)
    assert list(chain["step"]) == ["expand", "replace", "remove", "source"]
    family = derived("A2", storage)
    assert set(family["step"]) == {"remove", "replace", "expand"} and len(family) == 4


def test_unchanged_rerun_makes_zero_calls_and_a_changed_prompt_reruns_one_sku(catalog, monkeypatch):
    counter = CountingBackends(monkeypatch)
    _, instance = materialize(catalog)
    first_calls = len(counter.calls)
    counter.calls.clear()

    result, _ = materialize(catalog, instance=instance)
    assert counter.calls == []
    storage = str(catalog / "data")
    for asset in ("product_cutouts", "product_scenes", "product_expansions"):
        t = table(storage, asset)  # kept: A1's images reused, A3-A5's failures met again
        assert set(t[t.sku == "A1"].status) == {"ok"}
        m = meta(result, asset)
        assert m["backend_calls"] == 0 and m["rows_reused"] and m["table_written"] is False
    assert first_calls == 12

    # Change A1's prompt only: its scene and expansions re-run, nothing else.
    path = catalog / "catalogs" / f"{BATCH}.csv"
    text = path.read_text().replace("A1,../images/A1.jpg,,red", "A1,../images/A1.jpg,on slate,red")
    path.write_text(text)
    materialize(catalog, instance=instance)
    assert sorted(counter.calls) == sorted(
        ["fal-ai/bria/background/replace"] + ["fal-ai/bria/expand"] * 2
    )
    scenes = table(storage, "product_scenes")
    assert scenes[scenes.sku == "A1"].status.tolist() == ["ok"]
    assert set(scenes[scenes.sku == "A2"].status) == {"reused"}


def storage_files(storage: str) -> dict[str, tuple[int, int]]:
    """Every file under ``storage``: (modification time in ns, size)."""
    return {
        str(path): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in Path(storage).rglob("*")
        if path.is_file()
    }


def test_an_unchanged_rerun_writes_no_file_and_a_changed_product_writes_its_records(
    tmp_path, monkeypatch
):
    rows = [
        {"sku": "A1", "image_url": product(tmp_path, "A1", 1), "prompt": ""},
        {"sku": "A2", "image_url": product(tmp_path, "A2", 2, "colored"), "prompt": "on oak"},
    ]
    write_catalog(tmp_path, rows)
    settings = PipelineSettings(
        catalog_dir=str(tmp_path / "catalogs"), aspect_ratios=("1:1", "4:5"), report=False
    )
    storage = str(tmp_path / "data")
    counter = CountingBackends(monkeypatch)
    first, instance = materialize(tmp_path, settings=settings)
    assert len(counter.calls) == 8  # 2 x (remove, replace, expand x 2)
    assets = ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions")
    assert all(meta(first, asset)["table_written"] is True for asset in assets)

    before = storage_files(storage)
    counter.calls.clear()
    second, _ = materialize(tmp_path, settings=settings, instance=instance)
    assert counter.calls == []
    assert storage_files(storage) == before  # no table, index entry, mark or image written
    for asset in assets:
        m = meta(second, asset)
        assert m["table_written"] is False and m["rows_reused"] == len(table(storage, asset))
        assert m.get("backend_calls", 0) == 0
        # The tables stay as the run that made the images wrote them.
        assert set(table(storage, asset).run_id) == {first.run_id}, asset

    # A1's prompt changes: its scene and expansions are made again, and the tables that
    # changed are written, the unchanged rows now reused by this run.
    path = tmp_path / "catalogs" / f"{BATCH}.csv"
    path.write_text(path.read_text().replace("A1.jpg,", "A1.jpg,on slate"))
    third, _ = materialize(tmp_path, settings=settings, instance=instance)
    assert sorted(counter.calls) == ["fal-ai/bria/background/replace"] + ["fal-ai/bria/expand"] * 2
    written = {p for p, stamp in storage_files(storage).items() if before.get(p) != stamp}
    for asset in assets:  # A1's catalog row changed: every table records it
        assert meta(third, asset)["table_written"] is True
        assert f"{storage}/tables/product_images__{asset}/{BATCH}.parquet" in written
    scenes = table(storage, "product_scenes")
    made = scenes[scenes.sku == "A1"]
    assert made.status.tolist() == ["ok"] and set(made.run_id) == {third.run_id}
    assert json.loads(made.parameters.item())["prompt"] == "on slate"
    kept = scenes[scenes.sku == "A2"]
    assert kept.status.tolist() == ["reused"] and set(kept.reused_in_run_id) == {third.run_id}
    assert any("/reuse/" in p for p in written)  # the new scene's index entry


def test_a_reused_row_keeps_the_producing_run_in_the_records(catalog):
    first, instance = materialize(catalog)
    path = catalog / "catalogs" / f"{BATCH}.csv"  # A2 changes: every table is written again
    path.write_text(path.read_text().replace("on oak wood", "on slate"))
    second, _ = materialize(catalog, instance=instance)
    assert first.run_id != second.run_id
    storage = str(catalog / "data")
    for asset in ("product_cutouts", "product_scenes", "product_expansions"):
        t = table(storage, asset)
        reused = t[t.status == "reused"]
        assert len(reused) and set(reused.run_id) == {first.run_id}, asset
        assert set(reused.reused_in_run_id) == {second.run_id}, asset
        assert (reused.cost_usd == 0.0).all()  # the second run paid nothing
        assert reused.unit_price_usd.notna().all()  # the price the producing call applied

    expansions = table(storage, "product_expansions")
    output = expansions[expansions.status == "reused"].image_sha256.iloc[0]
    chain = trace(output, storage)
    # The catalog step's own reuse is assets.py's (the lead's); every call hop names run 1.
    made = chain
    assert list(made.step) == ["expand", "replace", "remove", "source"]
    assert set(made.run_id) == {first.run_id}
    assert set(made.reused_in_run_id) == {second.run_id}


def test_failed_rows_are_retried_on_the_next_run(catalog, monkeypatch):
    counter = CountingBackends(monkeypatch)
    _, instance = materialize(catalog)
    (catalog / "images" / "missing.jpg").write_bytes(make_product_photo("white_studio", 9)[0])
    counter.calls.clear()
    materialize(catalog, instance=instance)
    assert counter.calls.count("fal-ai/bria/background/remove") == 1  # only A4, now present
    cutouts = table(str(catalog / "data"), "product_cutouts")
    assert cutouts[cutouts.sku == "A4"].status.tolist() == ["ok"]


def test_fsspec_memory_storage(catalog):
    storage = "memory://bria-pipeline-test"
    materialize(catalog, storage=storage)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/bria-pipeline-test/tables/product_images__product_expansions/b1.parquet")
    expansions = table(storage, "product_expansions")
    ok = expansions[expansions.status == "ok"]
    assert len(ok) == 6 and all(uri.startswith("memory://") for uri in ok.image_uri)
    assert fs.exists(ok.image_uri.iloc[0].removeprefix("memory://"))
    records = load_records(storage)
    assert set(records["step"]) >= {"source", "remove", "replace", "expand"}


def test_same_partition_through_fal_gives_the_same_schema(catalog, fal_server, tmp_path):
    storage = str(tmp_path / "fal-data")
    bria = fal_resource(storage, catalog, retry_base_delay_s=0.02)
    materialize(catalog, storage=storage, bria=bria)
    expansions = table(storage, "product_expansions")
    assert list(expansions.columns) == list(COLUMNS)
    ok = expansions[expansions.status == "ok"]
    assert len(ok) == 6 and set(ok.backend) == {"fal"}
    assert ok.request_id.notna().all() and (ok.cost_usd == 0.04).all()
    stats = fal_server.stats()
    assert stats["submissions"] == 12 and stats["duplicate_submissions"] == 0
    assert "test-key-0" not in expansions.astype(str).to_csv()


def test_every_step_survives_transient_faults_and_pays_each_request_once(tmp_path, fal_server):
    """remove -> replace (2 images) -> expand (2 ratios) on a faulty fal server: nothing lost."""
    rows = [
        {"sku": f"F{i}", "image_url": product(tmp_path, f"F{i}", 100 + i, category)}
        for i, category in enumerate(["white_studio", "colored", "gray_gradient"] * 3)
    ]
    write_catalog(tmp_path, rows)
    fal_server.configure(
        rate_429=0.15, rate_5xx=0.1, rate_drop=0.05, rate_missing_once=0.05, retry_after=0.01
    )
    storage = str(tmp_path / "faulty")
    bria = fal_resource(
        storage, tmp_path, retry_base_delay_s=0.01, retry_max_delay_s=0.05, max_attempts=12
    )
    settings = PipelineSettings(
        catalog_dir=str(tmp_path / "catalogs"), num_images=2, aspect_ratios=("1:1", "4:5")
    )
    materialize(tmp_path, storage=storage, bria=bria, settings=settings)
    sizes = {"product_cutouts": 9, "product_scenes": 18, "product_expansions": 36}
    for asset, rows_expected in sizes.items():
        frame = table(storage, asset)
        assert (frame.status == "ok").sum() == rows_expected, frame[frame.status != "ok"]
    stats = fal_server.stats()
    requests = 9 + 9 + 36  # removes, replaces (2 images each), expands
    assert stats["submissions"] == requests and stats["duplicate_submissions"] == 0
    assert stats["billed_jobs"] == requests
    injected = stats["faults"]
    assert sum(injected.values()) >= 5, injected  # the faults really happened


def test_budget_stops_paid_calls_before_they_are_sent(catalog, fal_server, tmp_path):
    storage = str(tmp_path / "fal-budget")
    bria = fal_resource(storage, catalog, budget_usd=0.04)  # two removes (0.036) fit, not 3
    settings = PipelineSettings(catalog_dir=str(catalog / "catalogs"), steps=("remove",))
    materialize(catalog, storage=storage, bria=bria, settings=settings)
    cutouts = table(storage, "product_cutouts")
    assert (cutouts.status == "ok").sum() == 2
    assert "BudgetExceededError" in set(cutouts.error_class)
    assert fal_server.stats()["submissions"] == 2


def test_invalid_parameters_fail_before_any_call(catalog, monkeypatch):
    counter = CountingBackends(monkeypatch)
    settings = PipelineSettings(
        catalog_dir=str(catalog / "catalogs"),
        prompt_template="{sku} in {material}",
        # 3 of the 4 products fail (A1, A3 and A4): this test is about the rows, not the run.
        checks=CheckSettings(fail_run_above=0.9),
    )
    materialize(catalog, settings=settings)
    scenes = table(str(catalog / "data"), "product_scenes")
    a1 = scenes[scenes.sku == "A1"].iloc[0]
    assert a1.status == "failed" and "material" in a1.error_message
    assert counter.calls.count("fal-ai/bria/background/replace") == 1  # only A2 (own prompt)


EXPAND = "fal-ai/bria/expand"


@pytest.fixture
def square_catalog(tmp_path: Path) -> Path:
    """SQ: a square photo (its scene is square); WD: a wider one (128x112)."""
    rows = [
        {"sku": "SQ", "image_url": product(tmp_path, "SQ", 5, size=(128, 128))},
        {"sku": "WD", "image_url": product(tmp_path, "WD", 6)},
    ]
    write_catalog(tmp_path, rows)
    return tmp_path


def noop_expansion(storage: str) -> tuple[pd.Series, pd.Series]:
    """SQ's 1:1 expansion and the scene it was made from."""
    expansions = table(storage, "product_expansions")
    scenes = table(storage, "product_scenes")
    row = expansions[(expansions.sku == "SQ") & (expansions.variant == "scene@1:1")]
    return row.iloc[0], scenes[scenes.sku == "SQ"].iloc[0]


def assert_recorded_not_sent(row: pd.Series, scene: pd.Series) -> None:
    assert row.status == "ok" and row.backend == NOOP_BACKEND
    assert row.image_sha256 == row.parent_sha256 == scene.image_sha256  # the scene's bytes
    assert row.image_uri == scene.image_uri and row.content_type == scene.content_type
    assert (row.width, row.height) == (scene.width, scene.height) == (128, 128)
    assert row.cost_usd == 0.0 and row.unit_price_usd == 0.0 and pd.isna(row.request_id)
    assert "already 128x128" in row.noop_reason and "1:1" in row.noop_reason
    parameters = json.loads(row.parameters)
    assert parameters["aspect_ratio"] == "1:1" and parameters["canvas_size"] == [128, 128]
    assert row.root_source_uri.endswith("images/SQ.jpg") and pd.isna(row.error_class)


def test_an_expansion_to_the_ratio_the_scene_has_is_recorded_not_sent(square_catalog, monkeypatch):
    counter = CountingBackends(monkeypatch)
    result, instance = materialize(square_catalog)  # aspect_ratios ("1:1", "4:5")
    storage = str(square_catalog / "data")
    # SQ@4:5, WD@1:1 and WD@4:5 are sent; SQ@1:1 would give the square scene back.
    assert counter.calls.count(EXPAND) == 3
    row, scene = noop_expansion(storage)
    assert_recorded_not_sent(row, scene)
    assert row.run_id == result.run_id
    expansions = table(storage, "product_expansions")
    wide = expansions[(expansions.sku == "WD") & (expansions.variant == "scene@1:1")].iloc[0]
    assert wide.backend == "local" and (wide.width, wide.height) == (128, 128)
    assert wide.unit_price_usd == 0.04 and wide.parent_sha256 != wide.image_sha256

    # The usage and the estimate count the three calls only; the checks accept the no-op.
    m = meta(result, "product_expansions")
    assert (m["rows_ok"], m["rows_noop"], m["backend_calls"], m["bria.expand.calls"]) == (
        4,
        1,
        3,
        3,
    )
    assert m["list_price_usd"] == pytest.approx(3 * 0.04)
    assert "1 not sent" in m["summary"]
    assert meta(result, "product_scenes")["rows_noop"] == 0
    checks = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "product_expansions"
    ]
    assert checks and all(e.passed for e in checks), [(e.check_name, e.passed) for e in checks]

    # trace from the expanded image: the no-op hop, then the scene's own chain.
    chain = trace(row.image_sha256, storage)
    assert list(chain.step) == ["expand", "replace", "remove", "source"]
    assert chain.backend.iloc[0] == NOOP_BACKEND and chain.noop_reason.iloc[0] == row.noop_reason
    assert chain.attrs["total_cost_usd"] == 0.0  # the local engine; the no-op is free anyway

    # The audit report shows it as not sent, with its reason; the list price leaves it out.
    report = write_audit_report(storage, BATCH)
    expand = next(s for s in report.steps if s.asset == "product_expansions")
    assert (expand.ok, expand.noop, expand.backend_calls) == (4, 1, 3)
    assert expand.list_price_usd == pytest.approx(3 * 0.04) and expand.backends == ("local",)
    page = Path(report.path).read_text()
    assert "<dt>not sent</dt>" in page and row.noop_reason in page

    # An unchanged re-run makes no call and leaves the table as it was, the no-op recorded.
    counter.calls.clear()
    second, _ = materialize(square_catalog, instance=instance)
    assert counter.calls == []
    m = meta(second, "product_expansions")
    assert (m["rows_reused"], m["rows_noop"], m["table_written"]) == (4, 0, False)
    assert noop_expansion(storage)[0].equals(row)

    # A run that writes the table again (WD's prompt changed) reuses the no-op, its reason kept.
    write_catalog(
        square_catalog,
        [
            {"sku": "SQ", "image_url": "../images/SQ.jpg", "prompt": ""},
            {"sku": "WD", "image_url": "../images/WD.jpg", "prompt": "on slate"},
        ],
    )
    third, _ = materialize(square_catalog, instance=instance)
    assert sorted(counter.calls) == ["fal-ai/bria/background/replace", EXPAND, EXPAND]
    again, _ = noop_expansion(storage)
    assert again.status == "reused" and again.backend == NOOP_BACKEND
    assert again.noop_reason == row.noop_reason and again.reused_in_run_id == third.run_id
    assert again.image_sha256 == row.image_sha256 and again.cost_usd == 0.0
    assert list(trace(again.image_sha256, storage).step) == [
        "expand",
        "replace",
        "remove",
        "source",
    ]


def test_on_fal_no_expand_request_is_sent_for_the_ratio_the_scene_has(
    square_catalog, fal_server, tmp_path
):
    storage = str(tmp_path / "fal-noop")
    bria = fal_resource(storage, square_catalog, retry_base_delay_s=0.02)
    result, _ = materialize(square_catalog, storage=storage, bria=bria)
    stats = fal_server.stats()
    sent = [key.split(" ")[0] for key in stats["submissions_per_request"]]
    assert sent.count(EXPAND) == 3  # SQ@4:5, WD@1:1, WD@4:5: none for SQ@1:1
    assert stats["submissions"] == 2 + 2 + 3 and stats["duplicate_submissions"] == 0
    assert stats["billed_cost_usd"] == pytest.approx(2 * 0.018 + 2 * 0.023 + 3 * 0.04)

    row, scene = noop_expansion(storage)
    assert_recorded_not_sent(row, scene)
    expansions = table(storage, "product_expansions")
    paid = expansions[expansions.backend == "fal"]
    assert sorted(paid.sku + paid.variant) == ["SQscene@4:5", "WDscene@1:1", "WDscene@4:5"]
    assert (paid.cost_usd == 0.04).all() and paid.request_id.notna().all()
    assert expansions.cost_usd.sum() == pytest.approx(3 * 0.04)
    m = meta(result, "product_expansions")
    assert m["bria.expand.calls"] == 3 and m["cost_usd"] == pytest.approx(3 * 0.04)
    assert m["list_price_usd"] == pytest.approx(3 * 0.04) and m["rows_noop"] == 1
    chain = trace(row.image_sha256, storage)
    assert list(chain.step) == ["expand", "replace", "remove", "source"]
    assert chain.attrs["total_cost_usd"] == pytest.approx(0.023 + 0.018)  # the scene's chain


RATIOS = "1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9"


def test_a_bad_step_or_aspect_ratio_names_the_allowed_values():
    with pytest.raises(ValueError, match="step 'replce' is not one of remove, replace, expand"):
        PipelineSettings(steps=["remove", "replce"])
    with pytest.raises(ValueError, match=f"aspect_ratio '4x5' is not one of {RATIOS}"):
        PipelineSettings(aspect_ratios=["1:1", "4x5"])
    with pytest.raises(ValueError, match=f"aspect_ratio '4x5' is not one of {RATIOS}"):
        AspectRatio("4x5")  # the enum says the same, wherever it is used
    with pytest.raises(ValueError, match="step 'replace' works on the images of step 'remove'"):
        PipelineSettings(steps=["replace"])
    # Steps run parents first, whatever order they are given in.
    assert PipelineSettings(steps=["replace", "remove"]).steps == ("remove", "replace")
    # The types the JSON schema lists are exactly the enum's and the chain's values.
    assert get_args(AspectRatioName) == tuple(r.value for r in AspectRatio)
    assert PipelineSettings(aspect_ratios=[AspectRatio.R16_9]).aspect_ratios == ("16:9",)
    assert PipelineSettings(steps=["remove"]).steps == ("remove",)


def test_a_missing_local_catalog_dir_fails_when_the_definitions_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = (
        f"pipeline 'product_images': catalog_dir 'catalgos' is not a folder "
        f"({tmp_path / 'catalgos'} does not exist): create it"
    )
    with pytest.raises(ConfigurationError) as info:
        build_definitions(PipelineSettings(catalog_dir="catalgos"), storage=str(tmp_path))
    assert expected in str(info.value)
    pipeline = ProductImagePipeline(settings=PipelineSettings(catalog_dir="catalgos"))
    with pytest.raises(ConfigurationError, match="catalog_dir 'catalgos' is not a folder"):
        pipeline.build_operations()  # the sensor's parts alone, too
    (tmp_path / "catalgos").mkdir()
    defs = build_definitions(PipelineSettings(catalog_dir="catalgos"), storage=str(tmp_path))
    assert {s.name for s in defs.sensors or []} == {"product_images_catalog_sensor"}
    # An fsspec URL is not checked at load (that would be a network call on every load).
    remote = build_definitions(
        PipelineSettings(catalog_dir="s3://nowhere-bucket/catalogs"), storage=str(tmp_path)
    )
    assert {s.name for s in remote.sensors or []} == {"product_images_catalog_sensor"}


# --------------------------------------------------------------------------- batch verdict


def step_failures(result) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def check_evaluation(result, asset: str, check: str):
    key = dg.AssetKey(["product_images", asset])
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == key and e.check_name == check
    ]
    return evaluation


def missing_catalog(folder: Path, count: int = 6) -> list[str]:
    """A catalog of ``count`` products whose image files all do not exist."""
    skus = [f"HG-{101 + i}" for i in range(count)]
    write_catalog(folder, [{"sku": s, "image_url": f"../images/{s}.jpg"} for s in skus])
    return skus


def test_a_batch_whose_every_image_is_missing_fails_its_run_naming_count_and_causes(
    tmp_path, monkeypatch
):
    counter = CountingBackends(monkeypatch)
    skus = missing_catalog(tmp_path)
    result, _ = materialize(tmp_path, succeed=False)
    assert result.dagster_run.status == dg.DagsterRunStatus.FAILURE
    [failure] = step_failures(result)
    # The steps ran (no request: every row UpstreamFailed) so each step's table records the
    # batch; the run fails once they are all stored.
    assert failure.step_key == "product_images_image_steps"
    data = failure.step_failure_data.user_failure_data
    text = data.description
    assert text.startswith("6 of 6 products of batch 'b1' failed (100%)"), text
    assert "checks.fail_run_above=0.5" in text
    for sku in skus[:5]:  # the first 5 causes, each with sku, error class and message
        missing = tmp_path / "images" / f"{sku}.jpg"
        line = (
            f"- {sku}: FetchFailedError at product_images/catalog_batch: local file "
            f"{missing} does not exist; check the catalog path"
        )
        assert line in text.splitlines(), text
    assert skus[5] + ":" not in text and "- ... and 1 more failed product(s)" in text
    assert "UpstreamFailed" not in text  # root causes, not the cascade
    # The error the step failure carries (console, `dg launch`) is the same description.
    assert failure.step_failure_data.error.message.startswith("dagster._core.definitions")
    assert "6 of 6 products of batch 'b1' failed" in failure.step_failure_data.error.message
    meta = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    assert (meta["products"], meta["failed_products"], meta["failed_share"]) == (6, 6, 1.0)
    assert meta["fail_run_above"] == 0.5
    assert meta["error_classes"] == {"FetchFailedError": 6}
    assert meta["failed_skus"] == ", ".join(skus)
    assert "| HG-101 | FetchFailedError | product_images/catalog_batch |" in meta["first_errors"]
    # The audit report was written before failing (its own asset is skipped) and is named.
    report = Path(meta["audit_report"])
    assert report.exists() and "HG-106.jpg does not exist" in report.read_text()
    assert f"the audit report {report}" in text
    assert counter.calls == []

    # Every failed row is recorded, so lineage, the report and the retry schedule work.
    storage = str(tmp_path / "data")
    for asset in ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions"):
        frame = table(storage, asset)
        assert sorted(set(frame.sku)) == skus and set(frame.status) == {"failed"}, asset
    steps = ("source", "remove", "replace", "expand")
    keys = [ProductImagePipeline().asset_key(step) for step in steps]
    assert partitions_needing_retry(storage, [BATCH], keys) == [BATCH]
    source_check = check_evaluation(result, "catalog_batch", "failure_rate")
    assert not source_check.passed


def test_one_failed_product_of_many_keeps_the_run_green_with_a_warning(tmp_path):
    rows = [{"sku": f"P{i}", "image_url": product(tmp_path, f"P{i}", 30 + i)} for i in range(7)]
    rows.append({"sku": "P7", "image_url": "../images/gone.jpg"})
    write_catalog(tmp_path, rows)
    settings = PipelineSettings(
        catalog_dir=str(tmp_path / "catalogs"), steps=("remove",), aspect_ratios=("1:1",)
    )
    result, _ = materialize(tmp_path, settings=settings)  # asserts the run succeeded
    assert step_failures(result) == []
    for asset in ("catalog_batch", "product_cutouts"):
        evaluation = check_evaluation(result, asset, "failure_rate")
        assert not evaluation.passed  # 1 of 8 rows: over max_failure_rate 0.1
        assert evaluation.severity == dg.AssetCheckSeverity.WARN
        assert evaluation.metadata["failed_rows"].value == 1
    cutouts = table(str(tmp_path / "data"), "product_cutouts")
    assert (cutouts.status == "ok").sum() == 7


@pytest.mark.parametrize(
    ("case", "checks", "selection"),
    [
        ("no steps after it", CheckSettings(fail_run_above=0.4), None),
        ("steps not selected", CheckSettings(fail_run_above=0.4), ["source"]),
        ("blocking check", CheckSettings(fail_run_above=0.4, failure_severity="ERROR"), None),
    ],
)
def test_catalog_batch_gives_the_verdict_when_no_step_will(catalog, case, checks, selection):
    """2 of the 4 products fail in catalog_batch (A3's duplicate row, A4's missing file):
    50%, over fail_run_above 0.4. With no image step to run after it in this run, the
    failure is catalog_batch's own."""
    steps = () if case == "no steps after it" else ("remove",)
    settings = PipelineSettings(catalog_dir=str(catalog / "catalogs"), steps=steps, checks=checks)
    result, _ = materialize(catalog, settings=settings, succeed=False, selection=selection)
    failures = step_failures(result)
    assert [f.step_key for f in failures] == ["product_images__catalog_batch"], case
    text = failures[0].step_failure_data.user_failure_data.description
    assert text.startswith("2 of 4 products of batch 'b1' failed (50%)"), text
    assert "more than 40% of a batch's products fail (checks.fail_run_above=0.4)" in text
    assert "- A3: CatalogRowError at product_images/catalog_batch: b1.csv row 4" in text
    assert "- A4: FetchFailedError at product_images/catalog_batch: local file" in text
    assert table(str(catalog / "data"), "catalog_batch").status.value_counts()["failed"] == 2


def test_a_product_failed_in_a_later_step_counts_and_the_threshold_is_a_share(catalog):
    """A1 and A3 fail in replace (the template needs a column they lack), A3 and A4 also
    in catalog_batch: 3 of 4 products. Over 0.5 the run fails; at 0.75 it does not."""
    template = "{sku} in {material}"
    settings = PipelineSettings(catalog_dir=str(catalog / "catalogs"), prompt_template=template)
    result, _ = materialize(catalog, settings=settings, succeed=False)
    [failure] = step_failures(result)
    text = failure.step_failure_data.user_failure_data.description
    assert text.startswith("3 of 4 products of batch 'b1' failed (75%)"), text
    assert "- A1: RequestValidationError at product_images/product_scenes:" in text
    assert "material" in text.splitlines()[1]

    lenient = settings.model_copy(update={"checks": CheckSettings(fail_run_above=0.75)})
    materialize(catalog, settings=lenient)  # asserts success: 75% is not above 75%
