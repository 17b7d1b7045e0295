"""Asset checks evaluated with every materialization of a step table.

They run on the table just produced (no second read), so each partition's
materialization carries its own verdict. They describe the batch as it stands, not only
what this run made: a ``reused`` row's image is re-read from the store like a new one
(rows made by the run first, up to ``decode_sample``), so a fully reused re-run reports
the figures of the run that made the images, and each result's description says how
many rows were made by the run and how many reused:

- ``every_sku_accounted``: every catalog sku has an output or a recorded failure;
- ``outputs_decode``: output images decode with the expected mode and size;
- ``cutouts_have_alpha``: cutouts' foreground fraction is within a range;
- ``failure_rate``: failed rows under a threshold (WARN or ERROR severity);
- ``within_budget``: no request was held back by the budget.

Beyond the checks, :func:`batch_outcome` and :func:`batch_failure` decide whether a batch
fails its run: more than ``fail_run_above`` of its products failed, or every one did.
"""

import io
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from ..records.schema import FAILED, OK, OUTCOME_COLUMNS, REUSED, UPSTREAM_FAILED
from ..records.store import ImageStore
from ..steps.registry import step_named, step_names
from ..steps.settings import CheckSettings

__all__ = [
    "BatchOutcome",
    "CheckSettings",
    "ProductFailure",
    "batch_failure",
    "batch_outcome",
    "check_specs_for",
    "evaluate_checks",
]

FIRST_ERRORS = 5
"""Failed products whose error a batch failure's message lists."""
MESSAGE_CHARS = 400
"""An error message longer than this is cut in a batch failure's message (the step
tables and the audit report keep it whole)."""


_DESCRIPTIONS = {
    "every_sku_accounted": "Every sku of the batch has an output row or a recorded failure "
    "(none silently dropped).",
    "failure_rate": "Failed rows / all rows is at most checks.max_failure_rate. With "
    "failure_severity ERROR the check blocks: a batch over the threshold stops the steps "
    "after it and fails the run. (Apart from it, a batch where more than "
    "checks.fail_run_above of the products failed, or all of them, fails its run.)",
    "outputs_decode": "Up to checks.decode_sample output images decode (those made by the "
    "run first; then reused ones, re-read from the store with their header checked, as "
    "their bytes were decoded when made), with the expected mode (RGBA cutouts, RGB "
    "scenes) and the recorded width and height.",
    "within_budget": "No request was held back because it would have exceeded budget_usd.",
    "cutouts_have_alpha": "Each checked cutout's foreground share (alpha >= 128) lies within "
    "checks.min_foreground..checks.max_foreground: not empty, not the whole frame.",
}

COMPLIANCE_PREFIX = "compliance_"
"""Packshot assets have one check per channel, ``compliance_<channel>``."""


def compliance_description(channel: str) -> str:
    return (
        f"Every packshot of channel {channel!r} meets the channel's rules (background purity "
        "at the border, product fill within bounds, minimum long side, file size, no alpha "
        "where forbidden, format and sRGB; from the cutout: edge, halo, backdrop colour "
        "spill along the product's edge); each failure names the sku, the rule and the "
        "measured value."
    )


def check_specs_for(
    asset_key: dg.AssetKey,
    step: str,
    settings: CheckSettings | None = None,
    *,
    channels: Sequence[str] = (),
) -> list[dg.AssetCheckSpec]:
    """The checks of one step's asset, each with its description; ``failure_rate`` blocks
    the steps after it when its severity is ERROR. ``channels``: the packshot step's
    channels, one ``compliance_<channel>`` check each."""
    settings = settings or CheckSettings()
    names = ["every_sku_accounted", "failure_rate"]
    if step == "packshot":
        names.append("outputs_decode")
    elif step != "source":
        names += ["outputs_decode", "within_budget"]
    if _makes_cutouts(step):
        names.append("cutouts_have_alpha")
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=asset_key,
            description=_DESCRIPTIONS[name],
            blocking=name == "failure_rate" and settings.failure_severity == "ERROR",
        )
        for name in names
    ]
    specs += [
        dg.AssetCheckSpec(
            f"{COMPLIANCE_PREFIX}{channel}",
            asset=asset_key,
            description=compliance_description(channel),
        )
        for channel in channels
    ]
    return specs


def _rows_text(rows: pd.DataFrame, noun: str = "rows") -> str:
    """``"5 rows: 2 made by this run, 3 reused from earlier runs, 0 failed"``."""
    status = rows["status"]
    return (
        f"{len(rows)} {noun}: {int((status == OK).sum())} made by this run, "
        f"{int((status == REUSED).sum())} reused from earlier runs, "
        f"{int((status == FAILED).sum())} failed"
    )


def compliance_results(
    asset_key: dg.AssetKey, frame: pd.DataFrame, channels: Sequence[str], failed_class: str
) -> list[dg.AssetCheckResult]:
    """One ``compliance_<channel>`` result per channel: passed when none of its packshots
    broke a rule; the metadata lists each failure (sku, rule, measured value).

    A reused packshot counts as checked: it was checked when it was made, and one that
    broke a rule is a failed row, never reused."""
    results = []
    for channel in channels:
        rows = frame[frame["variant"] == channel]
        bad = rows[rows["error_class"] == failed_class]
        good = rows[rows["status"].isin([OK, REUSED])]
        reused = int((good["status"] == REUSED).sum())
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=f"{COMPLIANCE_PREFIX}{channel}",
                passed=bad.empty,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"{len(good) + len(bad)} packshot(s) of {channel!r} checked: "
                f"{len(good) - reused + len(bad)} made by this run, {reused} reused (checked "
                f"when made); {len(bad)} broke a rule.",
                metadata={
                    "checked": len(good) + len(bad),
                    "failing": len(bad),
                    "failures": dg.MetadataValue.md(
                        "\n".join(f"- {m}" for m in bad["error_message"].head(50)) or "none"
                    ),
                },
            )
        )
    return results


def _expected_mode(step: str) -> Sequence[str]:
    """The modes a step's images may have: its declaration's, or any (packshot)."""
    if step in step_names():
        return step_named(step).image_modes
    return ("RGB", "RGBA", "L", "P", "CMYK", "I;16")


def _makes_cutouts(step: str) -> bool:
    return step in step_names() and step_named(step).cutout


def _image_sample(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Up to ``limit`` rows with an image: those made by this run first, then reused ones
    (in table order), so a fully reused re-run samples the rows its producer sampled."""
    with_image = frame[frame["image_sha256"].notna()]
    made = with_image[with_image["status"] == OK]
    reused = with_image[with_image["status"] == REUSED]
    return pd.concat([made, reused]).head(limit)


def _inspect(row: dict, step: str, store: ImageStore) -> tuple[str | None, float | None]:
    """(problem or None, foreground share of a cutout or None) for one stored image.

    An image this run made is decoded whole. A reused row's bytes were decoded when they
    were made and are content-addressed, so its check reads them from the store and
    parses the header (format, mode, size): the image is still there and still what its
    row says, at a fraction of a decode. A cutout is decoded either way (its alpha)."""
    try:
        img = Image.open(io.BytesIO(store.get(row["image_sha256"])))
        if row["status"] != REUSED or _makes_cutouts(step):
            img.load()
    except Exception as exc:
        return f"{row['sku']}/{row['variant']}: {exc}", None
    if img.mode not in _expected_mode(step) or img.size != (row["width"], row["height"]):
        return f"{row['sku']}/{row['variant']}: {img.mode} {img.size[0]}x{img.size[1]}", None
    if not _makes_cutouts(step):
        return None, None
    return None, float((np.asarray(img.getchannel("A")) >= 128).mean())


def evaluate_checks(
    asset_key: dg.AssetKey,
    step: str,
    frame: pd.DataFrame,
    expected_skus: Iterable[str],
    store: ImageStore,
    settings: CheckSettings,
) -> list[dg.AssetCheckResult]:
    """The check results for one freshly produced step table (its reused rows included)."""
    results = []
    rows_text = _rows_text(frame)

    def result(
        name: str, passed: bool, description: str, severity: str = "ERROR", **metadata
    ) -> None:
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=bool(passed),
                severity=dg.AssetCheckSeverity(severity),
                description=description,
                metadata=metadata,
            )
        )

    expected = set(expected_skus)
    missing = sorted(expected - set(frame["sku"]))
    result(
        "every_sku_accounted",
        not missing,
        f"{len(expected)} sku(s) expected, {len(missing)} without a row; {rows_text}.",
        missing_skus=len(missing),
        examples=", ".join(missing[:10]) or "none",
    )

    rows = max(len(frame), 1)
    failed = int((frame["status"] == FAILED).sum())
    rate = failed / rows
    result(
        "failure_rate",
        rate <= settings.max_failure_rate,
        f"{rate:.1%} failed; {rows_text}.",
        settings.failure_severity,
        failure_rate=round(rate, 4),
        threshold=settings.max_failure_rate,
        failed_rows=failed,
    )
    if step == "source":
        return results

    sample = _image_sample(frame, settings.decode_sample)
    records = sample.to_dict("records")
    if records:  # decoding releases the GIL: a few threads cut a re-run's wall time
        with ThreadPoolExecutor(min(4, len(records))) as pool:
            seen = list(pool.map(lambda row: _inspect(row, step, store), records))
    else:
        seen = []
    bad = [problem for problem, _ in seen if problem]
    foreground = [share for _, share in seen if share is not None]
    if records:
        reused = int((sample["status"] == REUSED).sum())
        covered = (
            f"{len(records)} image(s) read: {len(records) - reused} made by this run, "
            f"{reused} reused (re-read from the store"
            f"{')' if _makes_cutouts(step) else '; their header checked, decoded when made)'}"
        )
    else:
        covered = "no image to read"
    result(
        "outputs_decode",
        not bad,
        f"{covered} (of {rows_text}); {len(bad)} did not decode as expected.",
        decoded=len(records) - len(bad),
        problems="; ".join(bad[:5]) or "none",
    )
    if _makes_cutouts(step):
        out_of_range = [
            f for f in foreground if not settings.min_foreground <= f <= settings.max_foreground
        ]
        measured = (
            f"foreground share of {len(foreground)} cutout(s) measured; {covered}"
            if foreground
            else f"no cutout to measure ({covered}), so no median_foreground"
        )
        figures: dict[str, float] = {}
        if foreground:  # no figure rather than a 0 that reads as an empty matte
            figures["median_foreground"] = round(float(np.median(foreground)), 4)
        result(
            "cutouts_have_alpha",
            not out_of_range,
            f"{measured}; {len(out_of_range)} outside the range.",
            checked=len(foreground),
            out_of_range=len(out_of_range),
            range=f"{settings.min_foreground:.2f}..{settings.max_foreground:.2f}",
            **figures,
        )
    if step == "packshot":
        return results
    held_back = int((frame["error_class"] == "BudgetExceededError").sum())
    result(
        "within_budget",
        held_back == 0,
        f"{held_back} request(s) held back by budget_usd; {rows_text}.",
        "WARN",
        requests_held_back=held_back,
    )
    return results


# --------------------------------------------------------------------------- batch verdict


@dataclass(frozen=True)
class ProductFailure:
    """Why one product failed: its first failed row that is not ``UpstreamFailed`` (the
    root cause), in step order; an ``UpstreamFailed`` row when that is all there is."""

    sku: str
    asset: str
    error_class: str
    message: str


@dataclass(frozen=True)
class BatchOutcome:
    """The products of a batch (distinct skus) and the ones that failed, in sku order."""

    products: int
    failures: tuple[ProductFailure, ...]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def share(self) -> float:
        return self.failed / self.products if self.products else 0.0

    def fails_run(self, fail_run_above: float) -> bool:
        """More than ``fail_run_above`` of the products failed, or every one did."""
        if not self.failed:
            return False
        return self.failed == self.products or self.share > fail_run_above


def batch_outcome(frames: Sequence[pd.DataFrame]) -> BatchOutcome:
    """Products and failed products over ImageRecord ``frames`` given in step order (the
    source table first): a product failed when any of its rows failed in any of them."""
    columns = list(OUTCOME_COLUMNS)
    rows = pd.concat([f[columns] for f in frames], ignore_index=True) if frames else None
    if rows is None or rows.empty:
        return BatchOutcome(0, ())
    failed = rows[rows["status"] == FAILED]
    # Root causes before the rows that only failed because an earlier step had; the
    # stable sort keeps step order within each.
    failed = failed.assign(_cascade=failed["error_class"] == UPSTREAM_FAILED).sort_values(
        "_cascade", kind="stable"
    )
    first = failed.drop_duplicates("sku").sort_values("sku", kind="stable")
    failures = tuple(
        ProductFailure(
            sku=str(r["sku"]),
            asset=str(r["asset_key"]),
            error_class=str(r["error_class"] or "BriaError"),
            message=str(r["error_message"] or ""),
        )
        for r in first.to_dict("records")
    )
    return BatchOutcome(int(rows["sku"].nunique()), failures)


def _cut(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 3] + "..."


def batch_failure(
    batch: str,
    outcome: BatchOutcome,
    settings: CheckSettings,
    *,
    audit_report: str | None = None,
) -> dg.Failure:
    """The ``dagster.Failure`` of a batch whose run fails (:meth:`BatchOutcome.fails_run`):
    the count, the first :data:`FIRST_ERRORS` errors (sku, error class, message) and what
    to do, in the description the console and the UI show; the same in its metadata."""
    shown = outcome.failures[:FIRST_ERRORS]
    limit = settings.fail_run_above
    lines = [f"- {f.sku}: {f.error_class} at {f.asset}: {_cut(f.message)}" for f in shown]
    if outcome.failed > len(shown):
        lines.append(f"- ... and {outcome.failed - len(shown)} more failed product(s)")
    where = "the step tables" + (f" and the audit report {audit_report}" if audit_report else "")
    description = (
        f"{outcome.failed} of {outcome.products} products of batch {batch!r} failed "
        f"({outcome.share:.0%}); a run fails when more than {limit:.0%} of a batch's products "
        f"fail (checks.fail_run_above={limit:g}) or all of them do. "
        f"First {len(shown)} error(s), by sku:\n" + "\n".join(lines) + "\n"
        f"Every failed row is recorded in {where}. Fix what the errors name and re-run the "
        "batch (ok rows are reused, only failed rows are redone), or raise "
        "checks.fail_run_above to accept this many failures."
    )
    classes = Counter(f.error_class for f in outcome.failures)
    table = "\n".join(
        ["| sku | error_class | asset | message |", "|---|---|---|---|"]
        + [
            f"| {_md(f.sku)} | {_md(f.error_class)} | {_md(f.asset)} | {_md(_cut(f.message))} |"
            for f in shown
        ]
    )
    metadata: dict[str, object] = {
        "batch": batch,
        "products": outcome.products,
        "failed_products": outcome.failed,
        "failed_share": round(outcome.share, 4),
        "fail_run_above": limit,
        "first_errors": dg.MetadataValue.md(table),
        "error_classes": dg.MetadataValue.json(dict(sorted(classes.items()))),
        "failed_skus": ", ".join(f.sku for f in outcome.failures[:50])
        + (", ..." if outcome.failed > 50 else ""),
    }
    if audit_report:
        metadata["audit_report"] = dg.MetadataValue.path(audit_report)
    return dg.Failure(description=description, metadata=metadata, allow_retries=False)


def _md(text: str) -> str:
    """``text`` as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")
