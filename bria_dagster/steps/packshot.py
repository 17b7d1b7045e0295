"""The packshot step: each cutout on each chosen channel's canvas, as records.

A local step (no API call, no cost, the same on either backend): for every usable cutout
and every channel preset in :class:`PackshotSettings`, :func:`~bria_dagster.packshot.
render_packshot` makes the channel's image and :func:`~bria_dagster.packshot.
check_packshot` measures it against the channel's rules. Each becomes one ImageRecord
(``step`` ``packshot``, ``variant`` the channel, ``parent_sha256`` the cutout,
``parameters`` the resolved preset), like every other step:

- *reuse*: the fingerprint is the cutout's sha256 and the resolved preset (with the
  renderer's version); an unchanged re-run renders nothing (the reuse index answers);
- *compliance*: a packshot that breaks a channel rule is a ``failed`` row
  (``error_class`` ``PackshotComplianceError``, the message names the rule and the
  measured value) that still points at the image, so it can be looked at; it is not
  exported;
- a failed cutout gives one failed row per channel (``ParentFailedError``).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..client.images import sha256_hex
from ..errors import BriaError
from ..packshot import (
    ChannelPreset,
    PresetFields,
    check_packshot,
    render_packshot,
    resolve_preset,
)
from ..records.schema import FAILED, OK, REUSED, canonical_json
from ..records.store import ImageStore
from ..records.tables import records_to_frame
from .rows import Job, StepContext, StepReport, failed_row, reused_rows, stored_row

__all__ = [
    "COMPLIANCE_ERROR",
    "PACKSHOT_ENDPOINT",
    "PackshotSettings",
    "packshot_fingerprint",
    "run_packshots",
]

PACKSHOT_ENDPOINT = "bria-dagster/packshot"
"""What packshot records name as their ``endpoint_id`` (a local step, not a Bria endpoint)."""

COMPLIANCE_ERROR = "PackshotComplianceError"


class PackshotSettings(BaseModel):
    """Which channel packshots a pipeline makes from its cutouts, and where they are exported.

    No ``channels``: no packshot step (the default).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: tuple[str, ...] = Field(
        default=(),
        description="Channel presets to make, by name: built-in (see "
        "bria_dagster.packshot.BUILTIN_PRESETS) or defined under `presets`.",
    )
    presets: dict[str, PresetFields] = Field(
        default_factory=dict,
        description="Custom channel presets by name (the same fields as the built-in ones, "
        "`name` from the key; `extends: <preset>` starts from another one); a name here "
        "overrides a built-in preset of that name.",
    )
    export_to: str | None = Field(
        default=None,
        description="Folder or fsspec URL the channel files and manifests go to, as "
        "<export_to>/<batch>/<channel>/; default <storage>/exports.",
    )
    filename_template: str = Field(
        default="{sku}_{channel}.{ext}",
        description="Exported file name; may use {sku}, {channel}, {ext}, {batch}, {variant}.",
    )
    workers: int = Field(
        default=max(1, min(4, os.cpu_count() or 1)),
        ge=1,
        le=64,
        description="Packshots rendered at once (threads: Pillow releases the GIL).",
    )

    @field_validator("presets", mode="before")
    @classmethod
    def _as_fields(cls, value: Any) -> Any:
        # A ChannelPreset given in Python is the same fields, all of them set.
        if isinstance(value, Mapping):
            return {
                key: preset.model_dump() if isinstance(preset, ChannelPreset) else preset
                for key, preset in value.items()
            }
        return value

    @model_validator(mode="after")
    def _presets_resolve(self) -> PackshotSettings:
        custom = self.custom_presets()
        for name in custom:  # each one complete and valid now, not when a run starts
            resolve_preset(name, custom)
        return self

    def custom_presets(self) -> dict[str, dict[str, Any]]:
        """``presets`` as the mappings :func:`~bria_dagster.packshot.resolve_preset` takes."""
        return {name: fields.model_dump(exclude_none=True) for name, fields in self.presets.items()}

    @field_validator("filename_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{sku}" not in value:
            raise ValueError(
                f"filename_template {value!r} must contain {{sku}}: without it every sku of "
                "a batch would be written to the same file"
            )
        try:
            value.format(sku="s", channel="c", ext="jpg", batch="b", variant="v")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"filename_template {value!r} uses an unknown field or bad syntax ({exc}); "
                "use {sku}, {channel}, {ext}, {batch} and {variant}"
            ) from exc
        return value

    def resolved(self) -> list[ChannelPreset]:
        """The presets of ``channels``, in order (an unknown name: :class:`PresetError`)."""
        custom = self.custom_presets()
        return [resolve_preset(name, custom) for name in self.channels]


def packshot_fingerprint(cutout_sha256: str, preset: ChannelPreset) -> str:
    """What a packshot's reuse is keyed on: the cutout and the resolved preset (whose
    :meth:`~bria_dagster.packshot.ChannelPreset.parameters` name the renderer's version, so
    a renderer change makes earlier packshots stale)."""
    return sha256_hex(
        canonical_json(
            {
                "step": "packshot",
                "image": f"sha256:{cutout_sha256}",
                "preset": preset.parameters(),
            }
        ).encode()
    )


def _usable(parent: dict[str, Any]) -> bool:
    return parent.get("status") in (OK, REUSED) and bool(parent.get("image_sha256"))


def run_packshots(
    ctx: StepContext,
    cutouts: Iterable[dict[str, Any]],
    presets: Sequence[ChannelPreset],
    store: ImageStore,
    reuse: Callable[[Iterable[str | None]], dict[str, list[dict[str, Any]]]],
    *,
    workers: int = 2,
) -> tuple[pd.DataFrame, StepReport]:
    """The packshot records of one batch: reused where the fingerprint is known (and its
    image still stored), rendered and checked otherwise."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[Job, ChannelPreset]] = []
    for parent in cutouts:
        for preset in presets:
            job = Job(parent["sku"], preset.name, parent)
            if not _usable(parent):
                reason = parent.get("error_message") or f"status {parent.get('status')}"
                rows.append(
                    _packshot_row(
                        failed_row(ctx, job, "ParentFailedError", f"the cutout failed: {reason}"),
                        preset,
                    )
                )
                continue
            job.fingerprint = packshot_fingerprint(parent["image_sha256"], preset)
            jobs.append((job, preset))

    found = reuse(job.fingerprint for job, _ in jobs)
    to_render: dict[str, list[tuple[Job, ChannelPreset]]] = {}
    reused = 0
    for job, preset in jobs:
        earlier = found.get(job.fingerprint or "")
        if earlier and all(store.exists(r["image_sha256"], r["content_type"]) for r in earlier):
            rows.extend(reused_rows(ctx, job, earlier))
            reused += len(earlier)
        else:  # grouped by cutout: each cutout is read and decoded once for all its channels
            to_render.setdefault(job.parent["image_sha256"], []).append((job, preset))

    def render(group: list[tuple[Job, ChannelPreset]]) -> list[dict[str, Any]]:
        parent = group[0][0].parent
        try:
            cutout = Image.open(io.BytesIO(store.get(parent["image_sha256"])))
            cutout.load()
        except Exception as exc:  # the stored cutout is gone or unreadable
            return [
                _packshot_row(
                    failed_row(ctx, job, type(exc).__name__, f"cutout not readable: {exc}"),
                    preset,
                )
                for job, preset in group
            ]
        return [_render_one(ctx, job, preset, cutout, store) for job, preset in group]

    groups = list(to_render.values())
    if groups:
        with ThreadPoolExecutor(max(1, min(workers, len(groups)))) as pool:
            for made in pool.map(render, groups):
                rows.extend(made)

    frame = records_to_frame(sorted(rows, key=lambda r: (r["sku"], r["variant"])))
    report = StepReport(
        ok=int((frame["status"] == OK).sum()),
        failed=int((frame["status"] == FAILED).sum()),
        reused=reused,
        duration_s=time.perf_counter() - started,
    )
    report.images_written = report.ok + int((frame["error_class"] == COMPLIANCE_ERROR).sum())
    return frame, report


def _render_one(
    ctx: StepContext, job: Job, preset: ChannelPreset, cutout: Image.Image, store: ImageStore
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        shot = render_packshot(cutout, preset)
    except BriaError as exc:  # e.g. an empty cutout: nothing to place on the canvas
        return _packshot_row(failed_row(ctx, job, type(exc).__name__, str(exc)), preset)
    issues = check_packshot(shot.data, preset, cutout=cutout)
    row = stored_row(ctx, job, job.variant, shot, store, backend="local", unit_price_usd=0.0)
    row.update(duration_s=time.perf_counter() - started, attempts=1)  # render and store
    if issues:
        row.update(
            status=FAILED,
            error_class=COMPLIANCE_ERROR,
            error_message=f"{job.sku} on {preset.name}: "
            + "; ".join(issue.message for issue in issues),
        )
    return _packshot_row(row, preset)


def _packshot_row(row: dict[str, Any], preset: ChannelPreset) -> dict[str, Any]:
    row.update(endpoint_id=PACKSHOT_ENDPOINT, parameters=canonical_json(preset.parameters()))
    return row
