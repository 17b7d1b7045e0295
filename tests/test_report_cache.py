"""The audit report follows the change.

An unchanged batch keeps its page (nothing written, the metadata says so); a changed
product is the only one drawn again, and only its new image is read for a thumbnail,
the page being the very page a full draw gives; a new renderer or thumbnail size draws
everything again; a cache that does not read, or a page that went missing, is rebuilt,
never trusted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bria_dagster import PipelineSettings
from bria_dagster.lineage.report import (
    AuditReport,
    default_report_path,
    render_audit_report,
    write_audit_report,
)
from bria_dagster.lineage.report import cache as report_cache
from bria_dagster.orchestration.report_metadata import audit_report_metadata
from bria_dagster.records.store import ImageStore
from tests.test_pipeline import materialize, product, write_catalog
from tests.test_report import _bytes, _picture, build_synthetic

BATCH = "batch-1"
PRODUCTS = 2  # S1 and S2
GENERATED = re.compile(r"<dt>generated at</dt><dd>[^<]*</dd>")


@pytest.fixture
def base(tmp_path: Path) -> str:
    return build_synthetic(str(tmp_path / "data")).base


def _files(base: str) -> dict[str, int]:
    """Every file under ``base`` and its mtime: what a call wrote shows as a difference."""
    return {str(p): p.stat().st_mtime_ns for p in Path(base).rglob("*") if p.is_file()}


def _edit_table(base: str, asset: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite ``asset``'s table of the batch with ``edit`` applied to every row."""
    path = f"{base}/tables/product_images__{asset}/{BATCH}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        edit(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def _page(report: AuditReport) -> str:
    assert report.path is not None
    return GENERATED.sub("", Path(report.path).read_text(encoding="utf-8"))


def _full_page(base: str) -> str:
    return GENERATED.sub("", render_audit_report(base, BATCH))


def _totals(report: AuditReport) -> dict[str, Any]:
    return report.plain()


def test_an_unchanged_batch_keeps_its_page_and_writes_nothing(base: str) -> None:
    first = write_audit_report(base, BATCH)
    assert not first.work.reused and first.work.files_written == 3
    assert first.work.sections_rendered == PRODUCTS and first.work.sections_cached == 0
    before = _files(base)

    again = write_audit_report(base, BATCH)

    assert again.work.reused and again.work.files_written == 0
    assert "step tables" in again.work.reason
    assert _files(base) == before  # no file written, not even the cache's
    assert _totals(again) == _totals(first)  # the totals come back from the manifest
    assert (again.path, again.url, again.size_bytes) == (first.path, first.url, first.size_bytes)
    meta = audit_report_metadata(again)
    assert meta["report_reused"] is True and meta["files_written"] == 0
    assert "step tables" in meta["report_reason"].value
    assert meta["audit_products"] == PRODUCTS
    assert "products" in meta and "S1" in meta["products"].value
    assert "report_sections_drawn" not in meta


def test_a_changed_product_is_the_only_one_drawn_again(base: str) -> None:
    first = write_audit_report(base, BATCH)
    new_image = ImageStore(f"{base}/images").put(
        _bytes(_picture(5, (300, 300)), "JPEG"), "image/jpeg"
    )

    def new_expansion(row: dict[str, Any]) -> None:  # S1's 1:1 expansion made again
        if row["sku"] == "S1" and row["variant"] == "scene@1:1":
            row.update(image_sha256=new_image.sha256, image_uri=new_image.uri, run_id="run-2")

    _edit_table(base, "product_expansions", new_expansion)

    report = write_audit_report(base, BATCH)

    work = report.work
    assert not work.reused and work.reason == "the batch's step tables changed"
    assert (work.sections_rendered, work.sections_cached) == (1, PRODUCTS - 1)
    assert work.thumbnails_made == 1  # only the new image was read
    assert work.thumbnails_cached == first.work.thumbnails_made - 1  # the old one dropped
    page = _page(report)
    assert page == _full_page(base)
    assert f'data-sha256="{new_image.sha256}"' in page
    meta = audit_report_metadata(report)
    assert meta["report_reused"] is False and meta["files_written"] == 3
    assert (meta["report_sections_drawn"], meta["report_thumbnails_made"]) == (1, 1)


def test_a_run_that_only_reused_rows_redraws_no_product(base: str) -> None:
    first = write_audit_report(base, BATCH)
    assert any(p.steps and any(s.reused for s in p.steps) for p in first.product_summaries)

    def reused_by_run_2(row: dict[str, Any]) -> None:
        if row["reused_in_run_id"]:
            row["reused_in_run_id"] = "run-2"

    for asset in ("product_cutouts", "product_packshots"):
        _edit_table(base, asset, reused_by_run_2)

    report = write_audit_report(base, BATCH)

    assert not report.work.reused and report.work.sections_cached == PRODUCTS
    page = _page(report)
    assert page == _full_page(base)
    assert '<code class="reused-in">run-2</code>' in page
    assert '<code class="reused-in">run-1</code>' not in page


def _new_failure(row: dict[str, Any]) -> None:
    if row["sku"] == "S2" and row["variant"] == "scene@1:1":
        row.update(
            status="failed",
            error_class="FalServiceError",
            error_message="a new failure after the last report",
            image_sha256=None,
            image_uri=None,
        )


def _new_price(row: dict[str, Any]) -> None:
    if row["sku"] == "S2" and row["variant"] == "scene@1:1":
        row.update(unit_price_usd=0.0456, cost_usd=0.0456)


@pytest.mark.parametrize(
    ("edit", "shown"),
    [(_new_failure, "a new failure after the last report"), (_new_price, "0.0456")],
    ids=["new failure", "new price"],
)
def test_a_changed_row_redraws_its_product(base: str, edit: Callable, shown: str) -> None:
    write_audit_report(base, BATCH)
    _edit_table(base, "product_expansions", edit)

    report = write_audit_report(base, BATCH)

    assert not report.work.reused
    assert (report.work.sections_rendered, report.work.sections_cached) == (1, 1)
    page = _page(report)
    assert shown in page and page == _full_page(base)


def test_a_new_renderer_or_thumbnail_size_draws_everything_again(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_audit_report(base, BATCH)
    monkeypatch.setattr(report_cache, "_renderer_code", lambda: "a changed stylesheet")

    restyled = write_audit_report(base, BATCH)

    assert not restyled.work.reused
    assert restyled.work.reason == "the report's format or thumbnail size changed"
    assert restyled.work.sections_cached == restyled.work.thumbnails_cached == 0
    assert restyled.work.thumbnails_made == first.work.thumbnails_made
    assert write_audit_report(base, BATCH).work.reused

    smaller = write_audit_report(base, BATCH, thumbnail_px=48)

    assert not smaller.work.reused and smaller.work.thumbnails_cached == 0
    assert 'width="48"' in _page(smaller)


def test_a_corrupt_cache_or_a_missing_page_is_rebuilt_not_trusted(base: str) -> None:
    write_audit_report(base, BATCH)
    folder = report_cache.cache_folder(base, "product_images")
    manifest, parts = f"{folder}/{BATCH}.json", f"{folder}/{BATCH}.parts.json"
    Path(manifest).write_text('{"renderer": "x", "tables": ')  # cut short
    Path(parts).write_text('{"renderer": "x", "sections": {"k": [1, 2]}, "thumbnails": {}}')

    rebuilt = write_audit_report(base, BATCH)

    assert not rebuilt.work.reused and "did not read" in rebuilt.work.reason
    assert rebuilt.work.sections_rendered == PRODUCTS
    assert _page(rebuilt) == _full_page(base)

    os.remove(default_report_path(base, BATCH))
    redrawn = write_audit_report(base, BATCH)

    assert not redrawn.work.reused and "missing" in redrawn.work.reason
    assert redrawn.work.sections_cached == PRODUCTS and redrawn.work.thumbnails_made == 0
    assert _page(redrawn) == _full_page(base)

    renderer = report_cache.renderer_key(160, base, "product_images", BATCH)
    cached = report_cache.ReportCache(base, "product_images", BATCH).parts(renderer)
    Path(parts).write_text(Path(parts).read_text()[:-40])  # a torn parts file
    _edit_table(base, "product_expansions", _new_price)

    torn = write_audit_report(base, BATCH)

    assert cached.sections and not torn.work.reused
    assert torn.work.sections_rendered == PRODUCTS and torn.work.thumbnails_cached == 0
    assert _page(torn) == _full_page(base)


def test_another_out_gets_its_page_from_the_cache(base: str, tmp_path: Path) -> None:
    write_audit_report(base, BATCH)
    elsewhere = str(tmp_path / "copy.html")

    copy = write_audit_report(base, BATCH, elsewhere)

    assert not copy.work.reused and copy.work.thumbnails_made == 0
    assert copy.work.sections_cached == PRODUCTS
    assert write_audit_report(base, BATCH, elsewhere).work.reused
    assert write_audit_report(base, BATCH).work.reused  # the default page is still current


def test_the_asset_keeps_the_page_of_an_unchanged_batch(tmp_path: Path) -> None:
    write_catalog(
        tmp_path, [{"sku": f"P{i}", "image_url": product(tmp_path, f"P{i}", i)} for i in (1, 2)]
    )
    settings = PipelineSettings(catalog_dir=str(tmp_path / "catalogs"), aspect_ratios=("1:1",))
    first, instance = materialize(tmp_path, settings=settings)
    reports = str(tmp_path / "data" / "reports")
    before = _files(reports)

    again, _ = materialize(tmp_path, settings=settings, instance=instance, selection=["report"])

    meta = _report_metadata(again)
    assert meta["report_reused"].value is True and meta["files_written"].value == 0
    assert _files(reports) == before
    assert _report_metadata(first)["report_reused"].value is False


def _report_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.path[-1] == "audit_report"
    ]
    return dict(event.materialization.metadata)


def test_the_cache_works_over_fsspec(tmp_path: Path) -> None:
    base = build_synthetic(f"memory://{tmp_path.name}/data").base
    first = write_audit_report(base, BATCH)
    fs = fsspec.filesystem("memory")
    cache_files = fs.find(report_cache.cache_folder(base, "product_images"))

    again = write_audit_report(base, BATCH)

    assert len(cache_files) == 2 and first.url and first.url.startswith("memory://")
    assert again.work.reused and again.work.files_written == 0
    fs.rm(fs.find(report_cache.cache_folder(base, "product_images")))
    rebuilt = write_audit_report(base, BATCH)
    assert not rebuilt.work.reused and rebuilt.work.sections_rendered == PRODUCTS
    assert rebuilt.size_bytes == first.size_bytes


def test_a_cache_that_cannot_be_written_leaves_the_page_written(base: str) -> None:
    folder = Path(report_cache.cache_folder(base, "product_images"))
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")  # the cache cannot go there

    report = write_audit_report(base, BATCH)

    assert report.work.files_written == 1 and "the cache was not written" in report.work.reason
    assert _page(report) == _full_page(base)
    assert not write_audit_report(base, BATCH).work.reused  # nothing vouches for the page
