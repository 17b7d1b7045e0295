"""Asset checks evaluated with every materialization of a step table.

They run on the table just produced (no second read), so each partition's
materialization carries its own verdict:

- ``every_sku_accounted``: every catalog sku has an output or a recorded failure;
- ``outputs_decode``: output images decode with the expected mode and size;
- ``cutouts_have_alpha``: cutouts' foreground fraction is within a range;
- ``failure_rate``: failed rows under a threshold (WARN or ERROR severity);
- ``within_budget``: no request was held back by the budget.
"""

import io
from collections.abc import Iterable, Sequence
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from .records import FAILED, OK, REUSED
from .store import ImageStore

__all__ = ["CheckSettings", "check_specs_for", "evaluate_checks"]


class CheckSettings(BaseModel):
    """Thresholds of the asset checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt threshold is an error

    min_foreground: float = Field(default=0.01, ge=0, le=1, description="Cutout alpha floor.")
    max_foreground: float = Field(default=0.99, ge=0, le=1, description="Cutout alpha ceiling.")
    max_failure_rate: float = Field(default=0.1, ge=0, le=1, description="Failed rows / rows.")
    failure_severity: Literal["WARN", "ERROR"] = Field(
        default="WARN", description="Severity when the failure rate is over the threshold."
    )
    decode_sample: int = Field(
        default=50, ge=0, description="New output images decoded per materialization."
    )


_DESCRIPTIONS = {
    "every_sku_accounted": "Every sku of the batch has an output row or a recorded failure "
    "(none silently dropped).",
    "failure_rate": "Failed rows / all rows is at most checks.max_failure_rate. With "
    "failure_severity ERROR the check blocks: a batch over the threshold stops the steps "
    "after it and fails the run.",
    "outputs_decode": "Up to checks.decode_sample new output images decode, with the "
    "expected mode (RGBA cutouts, RGB scenes) and the recorded width and height.",
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
    if step == "remove":
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


def compliance_results(
    asset_key: dg.AssetKey, frame: pd.DataFrame, channels: Sequence[str], failed_class: str
) -> list[dg.AssetCheckResult]:
    """One ``compliance_<channel>`` result per channel: passed when none of its packshots
    broke a rule; the metadata lists each failure (sku, rule, measured value)."""
    results = []
    for channel in channels:
        rows = frame[frame["variant"] == channel]
        bad = rows[rows["error_class"] == failed_class]
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=f"{COMPLIANCE_PREFIX}{channel}",
                passed=bad.empty,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "checked": int(rows["status"].isin([OK, REUSED]).sum()) + len(bad),
                    "failing": len(bad),
                    "failures": dg.MetadataValue.md(
                        "\n".join(f"- {m}" for m in bad["error_message"].head(50)) or "none"
                    ),
                },
            )
        )
    return results


def _expected_mode(step: str) -> Sequence[str]:
    return {"remove": ("RGBA",), "replace": ("RGB",), "expand": ("RGB", "RGBA")}.get(
        step, ("RGB", "RGBA", "L", "P", "CMYK", "I;16")
    )


def evaluate_checks(
    asset_key: dg.AssetKey,
    step: str,
    frame: pd.DataFrame,
    expected_skus: Iterable[str],
    store: ImageStore,
    settings: CheckSettings,
) -> list[dg.AssetCheckResult]:
    """The check results for one freshly produced step table."""
    results = []

    def result(name: str, passed: bool, severity: str = "ERROR", **metadata) -> None:
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=bool(passed),
                severity=dg.AssetCheckSeverity(severity),
                metadata=metadata,
            )
        )

    missing = sorted(set(expected_skus) - set(frame["sku"]))
    result(
        "every_sku_accounted",
        not missing,
        missing_skus=len(missing),
        examples=", ".join(missing[:10]) or "none",
    )

    rows = max(len(frame), 1)
    failed = int((frame["status"] == FAILED).sum())
    rate = failed / rows
    result(
        "failure_rate",
        rate <= settings.max_failure_rate,
        settings.failure_severity,
        failure_rate=round(rate, 4),
        threshold=settings.max_failure_rate,
        failed_rows=failed,
    )
    if step == "source":
        return results

    fresh = frame[frame["status"] == OK].head(settings.decode_sample)
    bad: list[str] = []
    foreground: list[float] = []
    for row in fresh.to_dict("records"):
        try:
            img = Image.open(io.BytesIO(store.get(row["image_sha256"])))
            img.load()
        except Exception as exc:
            bad.append(f"{row['sku']}/{row['variant']}: {exc}")
            continue
        if img.mode not in _expected_mode(step) or img.size != (row["width"], row["height"]):
            bad.append(f"{row['sku']}/{row['variant']}: {img.mode} {img.size[0]}x{img.size[1]}")
            continue
        if step == "remove":
            alpha = np.asarray(img.getchannel("A"))
            foreground.append(float((alpha >= 128).mean()))
    result(
        "outputs_decode",
        not bad,
        decoded=len(fresh) - len(bad),
        problems="; ".join(bad[:5]) or "none",
    )
    if step == "remove":
        out_of_range = [
            f for f in foreground if not settings.min_foreground <= f <= settings.max_foreground
        ]
        result(
            "cutouts_have_alpha",
            not out_of_range,
            checked=len(foreground),
            out_of_range=len(out_of_range),
            range=f"{settings.min_foreground:.2f}..{settings.max_foreground:.2f}",
            median_foreground=round(float(np.median(foreground)), 4) if foreground else 0.0,
        )
    if step == "packshot":
        return results
    held_back = int((frame["error_class"] == "BudgetExceededError").sum())
    result("within_budget", held_back == 0, "WARN", requests_held_back=held_back)
    return results
