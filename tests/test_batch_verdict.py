"""The batch verdict: which products failed, when a batch fails its run, and what its
``dagster.Failure`` says (bria_dagster.orchestration.checks.batch_outcome / batch_failure)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
from pydantic import ValidationError

from bria_dagster.orchestration.checks import (
    MESSAGE_CHARS,
    CheckSettings,
    batch_failure,
    batch_outcome,
)
from bria_dagster.records.schema import FAILED, OK


def rows(asset: str, *entries: tuple[str, str | None, str]) -> pd.DataFrame:
    """A step table of (sku, error_class or None for ok, message) rows."""
    return pd.DataFrame(
        [
            {
                "sku": sku,
                "status": OK if error is None else FAILED,
                "error_class": error,
                "error_message": message if error else None,
                "asset_key": f"product_images/{asset}",
            }
            for sku, error, message in entries
        ]
    )


def test_a_product_fails_once_however_many_of_its_rows_fail_and_its_root_cause_is_named():
    sources = rows(
        "catalog_batch", ("A", None, ""), ("B", "FetchFailedError", "gone"), ("C", None, "")
    )
    cutouts = rows(
        "product_cutouts",
        ("A", None, ""),
        ("B", "UpstreamFailed", "upstream source failed for this sku: FetchFailedError: gone"),
        ("C", None, ""),
    )
    expansions = rows(
        "product_expansions",
        ("A", None, ""),
        ("A", "FalServiceError", "fal said 500"),  # one of A's two ratios
        ("B", "UpstreamFailed", "upstream ..."),
        ("B", "UpstreamFailed", "upstream ..."),
        ("C", None, ""),
        ("C", None, ""),
    )
    outcome = batch_outcome([sources, cutouts, expansions])
    assert (outcome.products, outcome.failed) == (3, 2)
    assert [(f.sku, f.error_class, f.asset) for f in outcome.failures] == [
        ("A", "FalServiceError", "product_images/product_expansions"),
        ("B", "FetchFailedError", "product_images/catalog_batch"),
    ]
    assert outcome.share == pytest.approx(2 / 3)


def test_only_upstream_failures_are_named_when_the_root_table_is_not_given():
    scenes = rows("product_scenes", ("A", "UpstreamFailed", "upstream remove failed: X"))
    [failure] = batch_outcome([scenes]).failures
    assert (failure.error_class, failure.message) == ("UpstreamFailed", "upstream remove failed: X")


@pytest.mark.parametrize(
    ("failed", "products", "fail_run_above", "fails"),
    [
        (0, 0, 0.5, False),  # an empty batch
        (0, 4, 0.0, False),  # nothing failed, even at 0
        (1, 4, 0.0, True),  # at 0 any failure fails the run
        (2, 4, 0.5, False),  # exactly at the share: not above it
        (3, 4, 0.5, True),
        (3, 4, 1.0, False),
        (4, 4, 1.0, True),  # every product failed: always
    ],
)
def test_the_run_fails_above_the_share_or_when_every_product_failed(
    failed, products, fail_run_above, fails
):
    skus = [f"S{i}" for i in range(products)]
    frame = rows(
        "catalog_batch",
        *[(s, "FetchFailedError" if i < failed else None, "gone") for i, s in enumerate(skus)],
    )
    outcome = batch_outcome([frame] if products else [])
    assert (outcome.products, outcome.failed) == (products, failed)
    assert outcome.fails_run(fail_run_above) is fails


def test_the_failure_names_the_count_the_first_five_errors_and_what_to_do():
    long = "x" * (MESSAGE_CHARS * 2)
    frame = rows(
        "catalog_batch",
        *[
            (f"S{i}", "FetchFailedError", f"local file /c/S{i}.jpg does not exist")
            for i in range(7)
        ],
        ("S7", "ImageDecodeError", long),
        ("S8", None, ""),
    )
    outcome = batch_outcome([frame])
    failure = batch_failure(
        "spring", outcome, CheckSettings(fail_run_above=0.25), audit_report="/r/spring.html"
    )
    assert isinstance(failure, dg.Failure) and failure.allow_retries is False
    lines = failure.description.splitlines()
    assert lines[0] == (
        "8 of 9 products of batch 'spring' failed (89%); a run fails when more than 25% of a "
        "batch's products fail (checks.fail_run_above=0.25) or all of them do. "
        "First 5 error(s), by sku:"
    )
    assert lines[1:7] == [
        f"- S{i}: FetchFailedError at product_images/catalog_batch: "
        f"local file /c/S{i}.jpg does not exist"
        for i in range(5)
    ] + ["- ... and 3 more failed product(s)"]
    assert "the audit report /r/spring.html" in lines[7] and "re-run the batch" in lines[7]
    meta = failure.metadata
    assert meta["failed_products"].value == 8 and meta["products"].value == 9
    assert meta["error_classes"].value == {"FetchFailedError": 7, "ImageDecodeError": 1}
    assert meta["audit_report"].value == "/r/spring.html"
    assert meta["first_errors"].value.count("\n| S") == 5

    # A long message is cut in the failure (the tables keep it whole).
    last = batch_failure("b", batch_outcome([frame.iloc[7:8]]), CheckSettings())
    cut = last.description.splitlines()[1]
    assert cut.endswith("...") and len(cut) < MESSAGE_CHARS + 60


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_fail_run_above_is_a_share_from_0_to_1(value):
    assert CheckSettings().fail_run_above == 0.5
    with pytest.raises(ValidationError, match="fail_run_above"):
        CheckSettings(fail_run_above=value)
