"""What an asset shows in the Dagster UI: summary, preview, failures, column schema, row count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bria_dagster import PipelineSettings, ProductImagePipeline
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.orchestration.metadata import (
    PREVIEW_ROWS,
    PREVIEW_THUMBNAILS,
    column_schema,
    failures_markdown,
    preview_markdown,
    shorten,
    summary_markdown,
)
from bria_dagster.records.schema import FAILED, REUSED
from bria_dagster.records.store import ImageStore
from bria_dagster.records.tables import IMAGE_RECORD_SCHEMA, records_to_frame
from bria_dagster.steps.rows import StepReport
from tests.test_lineage import record, sha
from tests.test_pipeline import catalog, materialize, meta, table  # noqa: F401 (fixture)

LONG_ERROR = (
    "fal rejected the request (422): the canvas 9000x9000 exceeds the endpoint's limit of "
    "5000x5000 pixels | reduce canvas_size or choose a smaller aspect ratio"
)
THUMB = "](data:image/jpeg;base64,"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "images"))


def cutout_frame(store: ImageStore, *, reused: int, ok: int, failed: int):
    """``failed`` rows last by sku (so "failures first" is the preview's doing)."""
    rows = []
    for i in range(reused + ok):
        data = make_product_photo("white_studio", i, (64, 48))[0]
        image = store.put(data, "image/jpeg").sha256
        status = REUSED if i < reused else "ok"
        rows.append(
            record("remove", f"A{i:02d}", image, sha(f"src{i}"), variant="cutout", status=status)
        )
        if status == REUSED:
            rows[-1].update(run_id="0123456789abcdef-earlier", reused_in_run_id="run-2")
    for i in range(failed):
        row = record("remove", f"Z{i:02d}", None, sha(f"bad{i}"), variant="cutout", status=FAILED)
        row["error_message"] = LONG_ERROR
        rows.append(row)
    return records_to_frame(rows)


def unescape(markdown: str) -> str:
    """The text markdown shows for ``markdown``'s backslash escapes."""
    return re.sub(r"\\(.)", r"\1", markdown)


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]


def test_preview_counts_rows_lists_failures_first_and_thumbnails_reused_images(store):
    frame = cutout_frame(store, reused=7, ok=1, failed=2)
    text = preview_markdown(frame, store, limit=6)
    assert text.startswith("**6 of 10 rows**, failures first (2 failed; every error in full")
    rows = table_rows(text)
    assert len(rows) == 6
    assert rows[0].startswith("| Z00 |") and rows[1].startswith("| Z01 |")
    assert all(THUMB in row for row in rows[2:])  # the reused rows show their image
    assert "reused (made by run 01234567)" in rows[2]
    assert text.count(THUMB) == 4  # one thumbnail per shown image, no more


def test_failures_leave_half_the_preview_to_images(store):
    frame = cutout_frame(store, reused=1, ok=4, failed=9)
    rows = table_rows(preview_markdown(frame, store, limit=6))
    assert [THUMB in row for row in rows] == [False] * 3 + [True] * 3
    text = preview_markdown(cutout_frame(store, reused=0, ok=0, failed=9), store, limit=6)
    assert text.startswith("**6 of 9 rows**, failures first (6 of 9 failures;")


def test_preview_lists_up_to_50_rows_with_sha_and_size_and_6_thumbnails(store):
    frame = cutout_frame(store, reused=0, ok=60, failed=2)
    text = preview_markdown(frame, store)
    assert text.startswith(f"**{PREVIEW_ROWS} of 62 rows**, failures first (2 failed;")
    rows = table_rows(text)
    assert len(rows) == PREVIEW_ROWS == 50
    assert text.count(THUMB) == PREVIEW_THUMBNAILS == 6  # the first six images only
    assert [THUMB in row for row in rows[2:9]] == [True] * 6 + [False]
    by_sku = {row.split(" | ")[0].removeprefix("| "): row.split(" | ") for row in rows}
    ok = frame.set_index("sku").loc["A47"]
    cells = by_sku["A47"]  # sku, variant, status, image, sha256, size
    assert cells[3] == "(no thumbnail)" and cells[4] == f"`{ok['image_sha256'][:12]}`"
    assert cells[5] == f"{int(ok['width'])}×{int(ok['height'])} |"
    assert by_sku["Z00"][4:] == ["", " |"]  # a failure has no image
    assert len(table_rows(preview_markdown(frame, store, limit=62))) == 62


def test_preview_cuts_errors_at_a_word_boundary_and_failures_keep_them_whole(store):
    frame = cutout_frame(store, reused=0, ok=1, failed=3)
    cell = table_rows(preview_markdown(frame, store))[0].split(" | ")[3]
    short = cell.removeprefix("FalRequestError: ").removesuffix(" |")
    assert short.endswith("…") and len(short) <= 81
    kept = short.removesuffix("…")
    assert LONG_ERROR.startswith(kept) and LONG_ERROR[len(kept)] == " "  # whole words only

    failures = failures_markdown(frame)
    assert failures is not None and failures.startswith("**3 failed rows**")
    items = [line for line in failures.splitlines() if line.startswith("- ")]
    assert items[0].startswith("- **Z00** cutout, FalRequestError: ")
    assert [unescape(item).endswith(f": {LONG_ERROR}") for item in items] == [True] * 3
    assert failures_markdown(frame[frame.status != FAILED]) is None


def test_failures_beyond_the_limit_point_to_the_table(store):
    text = failures_markdown(cutout_frame(store, reused=0, ok=0, failed=5), limit=2)
    assert text is not None and text.count("\n- ") == 2
    assert "3 more in the asset's table" in text


def test_shorten_keeps_short_text_and_never_cuts_a_word():
    assert shorten("no such file:\n  a.jpg") == "no such file: a.jpg"
    assert shorten("x" * 100, 10) == "x" * 10 + "…"  # one long word: cut it anyway
    assert shorten("alpha beta gamma delta", 12) == "alpha beta…"


def test_summary_of_a_reuse_run_and_of_a_local_run_says_what_was_paid(store):
    frame = cutout_frame(store, reused=3, ok=0, failed=1)
    reuse = StepReport(ok=0, reused=3, failed=1)
    text = summary_markdown(frame, reuse, "local")
    assert text.startswith(
        "**4 rows**: 0 made by this run, 3 reused from earlier runs (no call), "
        "1 failed (see `failures`)."
    )
    assert "0 calls to the local backend, $0.00 paid." in text
    assert text.endswith("At fal list price, reuse saved $0.054 (the whole batch).")

    frame = cutout_frame(store, reused=0, ok=3, failed=0)
    fresh = StepReport(ok=3, calls=3, estimated_cost_usd=0.054, cost_usd=0.0)
    text = summary_markdown(frame, fresh, "local")
    assert "3 calls to the local backend, $0.00 paid (the local engine is free)." in text
    assert text.endswith("At fal list price, these calls would cost $0.054.")
    mixed = cutout_frame(store, reused=2, ok=1, failed=0)
    report = StepReport(ok=1, reused=2, calls=1, estimated_cost_usd=0.018, cost_usd=0.018)
    paid = summary_markdown(mixed, report, "fal")
    assert "1 call to the fal backend, $0.018 paid." in paid
    assert paid.endswith(
        "At list price, these calls would cost $0.018; reuse saved $0.036; "
        "the whole batch is worth $0.054."
    )


def test_column_schema_is_the_image_record_schema_with_a_description_per_column():
    columns = column_schema().columns
    assert [c.name for c in columns] == IMAGE_RECORD_SCHEMA.names
    assert all(c.description for c in columns)
    by_name = {c.name: c for c in columns}
    assert by_name["sku"].constraints.nullable is False
    assert by_name["error_message"].constraints.nullable is True
    assert (by_name["width"].type, by_name["created_at"].type) == ("int32", "timestamp")


def test_assets_carry_the_schema_and_each_materialization_its_row_count(catalog):  # noqa: F811
    pipeline = ProductImagePipeline(settings=PipelineSettings(), storage=str(catalog / "x"))
    for asset in pipeline.build_assets():
        for spec in asset.specs:
            assert "bria" in spec.kinds
            if "parquet" in spec.kinds:  # the record tables (not the HTML audit report)
                assert spec.metadata["dagster/column_schema"].schema == column_schema()

    _, instance = materialize(catalog)
    result, _ = materialize(catalog, instance=instance)  # unchanged: every image reused
    storage = str(catalog / "data")
    for asset in ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions"):
        m = meta(result, asset)
        assert m["dagster/row_count"] == len(table(storage, asset))
        assert list(m)[:2] == ["summary", "preview"]

    source = meta(result, "catalog_batch")
    assert "backend_calls" not in source and "cost_usd" not in source  # no calls: no such keys
    assert "not fetched again" in source["summary"] and source["rows_reused"] == 3

    cutouts = meta(result, "product_cutouts")
    assert cutouts["rows_ok"] == 0 and cutouts["rows_reused"] == 3 and cutouts["rows_failed"] == 2
    assert "3 reused from earlier runs (no call)" in cutouts["summary"]
    assert cutouts["preview"].startswith("**5 of 5 rows**, failures first")
    rows = table_rows(cutouts["preview"])
    assert [r.split(" | ")[2] for r in rows[:2]] == ["failed", "failed"]
    assert all(THUMB in r for r in rows[2:])
    failed = table(storage, "product_cutouts").query("status == 'failed'")
    for message in failed["error_message"]:
        assert message in unescape(cutouts["failures"])
    assert cutouts["list_price_usd"] == 0 and cutouts["saved_by_reuse_usd"] > 0


def test_preview_rows_setting_limits_every_preview_and_the_products_table(catalog):  # noqa: F811
    settings = PipelineSettings(
        catalog_dir=str(catalog / "catalogs"), steps=("remove",), preview_rows=2
    )
    result, _ = materialize(catalog, settings=settings)
    for asset in ("catalog_batch", "product_cutouts"):
        preview = meta(result, asset)["preview"]
        assert preview.startswith("**2 of 5 rows**") and len(table_rows(preview)) == 2
    report = meta(result, "audit_report")
    products = report["products"]
    # A3's second row (a repeated sku) and A4 (missing image) fail, then their cutouts
    assert products.startswith("**2 of 4 products**, failed products first (2 failed)")
    assert [row.split(" | ")[:2] for row in table_rows(products)] == [
        ["| A3", "failed (2)"],
        ["| A4", "failed (2)"],
    ]
    assert "2 more products in `audit_report` (raise `preview_rows`" in products


def test_report_url_base_must_be_http():
    assert PipelineSettings(report_url_base="https://example.org/r/").report_url_base == (
        "https://example.org/r"
    )
    for wrong in ("file:///srv/reports", "/srv/reports", "s3://bucket/reports"):
        with pytest.raises(ValueError, match="http:// or https:// URL"):
            PipelineSettings(report_url_base=wrong)
