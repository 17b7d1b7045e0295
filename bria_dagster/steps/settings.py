"""What a pipeline does: its steps, their defaults, and its checks' thresholds.

Dagster-free: the steps layer plans from these settings; the Dagster layer builds assets
from them. Each step adds its own fields (its declaration's ``settings`` model, see
:mod:`bria_dagster.steps.registry`): ``PipelineSettings`` inherits them all.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .packshot import PackshotSettings
from .registry import all_steps, step_named, step_names
from .step import SOURCE

__all__ = [
    "API_STEPS",
    "PREVIEW_ROWS",
    "REFRESH_TAG",
    "STEP_ASSETS",
    "CheckSettings",
    "PipelineSettings",
    "StepName",
]

API_STEPS: tuple[str, ...] = step_names()
"""The steps that call a Bria endpoint (every declared step), parents first."""

StepName = Literal[API_STEPS]  # type: ignore[valid-type]
"""A step as settings spell it: a declared step's name (a JSON-schema ``enum``)."""

STEP_ASSETS = {
    SOURCE: "catalog_batch",
    **{step.name: step.asset for step in all_steps()},
    "packshot": "product_packshots",
    "export": "channel_exports",
    "report": "audit_report",
}
"""Each step's default asset name (``packshot`` and ``export`` exist when the pipeline has
packshot channels; ``report`` unless ``report=False``)."""

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


_STEP_SETTINGS = tuple(dict.fromkeys(s.settings for s in all_steps() if s.settings is not None))


class PipelineSettings(*_STEP_SETTINGS, BaseModel):  # type: ignore[misc]
    """What the pipeline does; per-row catalog columns override the defaults.

    Besides the fields below, every step's own settings (replace's ``prompt_template``,
    ``num_images``...; expand's ``aspect_ratios``; see each step's module).
    """

    model_config = ConfigDict(frozen=True)

    catalog_dir: str = Field(
        default="catalogs",
        description="Folder (or fsspec URL) holding one <batch>.csv|.parquet|.jsonl per batch.",
    )
    steps: tuple[StepName, ...] = Field(
        default=tuple(step.name for step in all_steps() if step.on_by_default),
        description="Which steps run; each step's parent step must run too, unless it is "
        "the source images.",
    )
    seed: int | None = Field(default=None, description="Default seed (catalog 'seed' wins).")
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

    # Before the Literal type's own check, so that the error names the setting, the value
    # and every allowed one in words ("step 'replce' is not one of ...").
    @field_validator("steps", mode="before")
    @classmethod
    def _known_steps(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        for name in value:
            if name not in API_STEPS:
                raise ValueError(f"step {name!r} is not one of {', '.join(API_STEPS)}")
        for name in value:
            parent = step_named(name).parent
            if parent != SOURCE and parent not in value:
                raise ValueError(
                    f"step {name!r} works on the images of step {parent!r}: add {parent!r} "
                    f"to steps (got {list(value)})"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"steps names a step twice: {list(value)}")
        return tuple(name for name in API_STEPS if name in value)  # parents first
