"""What a pipeline does: its steps, their defaults, and its checks' thresholds.

Dagster-free: the steps layer plans from these settings; the Dagster layer builds assets
from them.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..client.contracts.expand import AspectRatio, AspectRatioName
from .packshot import PackshotSettings

__all__ = [
    "API_STEPS",
    "PREVIEW_ROWS",
    "REFRESH_TAG",
    "STEP_ASSETS",
    "CheckSettings",
    "PipelineSettings",
    "StepName",
]

STEP_ASSETS = {
    "source": "catalog_batch",
    "remove": "product_cutouts",
    "replace": "product_scenes",
    "expand": "product_expansions",
    "packshot": "product_packshots",
    "export": "channel_exports",
    "report": "audit_report",
}
"""Each step's default asset name (``packshot`` and ``export`` exist when the pipeline has
packshot channels; ``report`` unless ``report=False``)."""

StepName = Literal["remove", "replace", "expand"]
"""A step that calls a Bria endpoint, as settings spell it (a JSON-schema ``enum``)."""

API_STEPS: tuple[StepName, ...] = get_args(StepName)
"""The steps that call a Bria endpoint, in chain order."""

PREVIEW_ROWS = 50
"""Rows in the preview by default (``PipelineSettings.preview_rows``)."""


class CheckSettings(BaseModel):
    """Thresholds of the asset checks, and the share of failed products that fails a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt threshold is an error

    min_foreground: float = Field(default=0.01, ge=0, le=1, description="Cutout alpha floor.")
    max_foreground: float = Field(default=0.99, ge=0, le=1, description="Cutout alpha ceiling.")
    max_failure_rate: float = Field(default=0.1, ge=0, le=1, description="Failed rows / rows.")
    failure_severity: Literal["WARN", "ERROR"] = Field(
        default="WARN", description="Severity when the failure rate is over the threshold."
    )
    decode_sample: int = Field(
        default=50,
        ge=0,
        description="Output images checked per step and materialization: the rows made by "
        "the run first (decoded), then reused rows (re-read from the store, header checked; "
        "cutouts decoded for their alpha).",
    )
    fail_run_above: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of a batch's products that failed (a product fails when any of "
        "its rows does, in any step) above which the run fails, with the count and the "
        "first errors in its failure message; a batch whose every product failed always "
        "fails its run. Below it, failed rows are only the failure_rate check's verdict.",
    )


REFRESH_TAG = "bria/refresh"
"""Run tag: fetch source images again instead of reusing earlier source records."""


class PipelineSettings(BaseModel):
    """What the pipeline does; per-row catalog columns override the defaults."""

    model_config = ConfigDict(frozen=True)

    catalog_dir: str = Field(
        default="catalogs",
        description="Folder (or fsspec URL) holding one <batch>.csv|.parquet|.jsonl per batch.",
    )
    steps: tuple[StepName, ...] = Field(
        default=("remove", "replace", "expand"),
        description="Which steps run, in order; each needs the ones before it.",
    )
    prompt_template: str = Field(
        default="professional studio product photo, soft light, clean seamless backdrop",
        description="Default replace prompt; may use {sku} and any catalog column.",
    )
    ref_image_url: str | None = Field(
        default=None, description="Default reference background (instead of a prompt)."
    )
    negative_prompt: str = ""
    num_images: int = Field(default=1, ge=1, le=4, description="Scenes per cutout.")
    seed: int | None = Field(default=None, description="Default seed (catalog 'seed' wins).")
    aspect_ratios: tuple[AspectRatioName, ...] = Field(
        default=("1:1", "4:5"), description="Expansions per scene (catalog 'aspect_ratios' wins)."
    )
    fetch_concurrency: int = Field(default=16, ge=1, description="Source images fetched at once.")
    checks: CheckSettings = Field(default_factory=CheckSettings, description="Check thresholds.")
    packshots: PackshotSettings = Field(
        default_factory=PackshotSettings,
        description="Channel packshots from the cutouts, and their export (none by default).",
    )
    report: bool = Field(
        default=True,
        description="Write each batch's audit report (HTML) as the asset audit_report.",
    )
    report_url_base: str | None = Field(
        default=None,
        description="http(s) URL where <storage>/reports is served (an S3 website, a static "
        "file server): audit_report then links <report_url_base>/<pipeline>/<batch>.html, "
        "which the UI opens; without it the UI shows the report's path and how to serve it.",
    )
    preview_rows: int = Field(
        default=PREVIEW_ROWS,
        ge=1,
        description="Rows in each step's preview and products in audit_report's table.",
    )

    @field_validator("report_url_base")
    @classmethod
    def _http_base(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"report_url_base must be an http:// or https:// URL, not {value!r}: the "
                "Dagster UI is an http page, and browsers do not follow file:// links from it"
            )
        return value.rstrip("/") if value else value

    # Before the Literal types' own checks, so that the error names the setting, the
    # value and every allowed one in words ("step 'replce' is not one of ...").
    @field_validator("steps", mode="before")
    @classmethod
    def _known_steps(cls, value: Any) -> Any:
        for step in value if isinstance(value, list | tuple) else ():
            if step not in API_STEPS:
                raise ValueError(f"step {step!r} is not one of {', '.join(API_STEPS)}")
        if isinstance(value, list | tuple) and list(value) != list(API_STEPS[: len(value)]):
            raise ValueError(
                f"steps must be a prefix of {list(API_STEPS)} (each step consumes the one "
                f"before), got {list(value)}"
            )
        return value

    @field_validator("aspect_ratios", mode="before")
    @classmethod
    def _known_ratios(cls, value: Any) -> Any:
        for ratio in value if isinstance(value, list | tuple) else ():
            AspectRatio(ratio)  # raises "aspect_ratio '4x5' is not one of 1:1, 2:3, ..."
        return value
