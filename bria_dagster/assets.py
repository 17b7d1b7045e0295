"""The asset factory: catalog batch -> cutouts -> scenes -> expansions, partitioned by batch.

``build_product_image_assets`` returns the software-defined assets (and their
checks) for one pipeline. Every asset's value is an ImageRecord table, one row
per output image or failure, stored by :class:`ImageRecordIOManager`.
"""

import asyncio
import json
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import fsspec
import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext
from pydantic import BaseModel, ConfigDict, Field

from ._version import __version__
from .catalog import FORMATS, load_catalog, row_json
from .checks import CheckSettings, check_specs_for, evaluate_checks
from .endpoints import AspectRatio
from .engine.outpaint import plan_expand
from .errors import BriaError, CatalogError, RequestValidationError
from .fetch import fetch_bytes, fetch_client
from .images import decode_image, sniff_content_type
from .io_manager import read_records
from .metadata import definition_metadata, materialization_metadata
from .records import FAILED, OK, REUSED, frame_rows, records_to_frame, reused_record
from .resource import BriaResource
from .steps import Job, RequestPlanner, StepContext, StepReport, run_step, source_row
from .translator import STEP_ASSETS

if TYPE_CHECKING:
    from .pipeline import ProductImagePipeline

__all__ = [
    "REFRESH_TAG",
    "PipelineSettings",
    "build_product_image_assets",
    "find_catalog_file",
]

REFRESH_TAG = "bria/refresh"
"""Run tag: fetch source images again instead of reusing earlier source records."""


class PipelineSettings(BaseModel):
    """What the pipeline does; per-row catalog columns override the defaults."""

    model_config = ConfigDict(frozen=True)

    catalog_dir: str = Field(
        default="catalogs",
        description="Folder (or fsspec URL) holding one <batch>.csv|.parquet|.jsonl per batch.",
    )
    steps: tuple[str, ...] = Field(
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
    aspect_ratios: tuple[str, ...] = Field(
        default=("1:1", "4:5"), description="Expansions per scene (catalog 'aspect_ratios' wins)."
    )
    fetch_concurrency: int = Field(default=16, ge=1, description="Source images fetched at once.")
    checks: CheckSettings = Field(default_factory=CheckSettings, description="Check thresholds.")


def find_catalog_file(catalog_dir: str, batch: str) -> str:
    """The catalog file of ``batch`` in ``catalog_dir`` (any supported extension)."""
    fs, root = fsspec.core.url_to_fs(catalog_dir)
    prefix = "" if "://" not in catalog_dir else catalog_dir.split("://", 1)[0] + "://"
    for ext in FORMATS:
        path = f"{root.rstrip('/')}/{batch}{ext}"
        if fs.exists(path):
            return prefix + path if prefix else path
    others = [p for p in fs.glob(f"{root.rstrip('/')}/{batch}.*") if not p.endswith(".tmp")]
    if others:
        raise CatalogError(
            f"catalog file {others[0]} for batch {batch!r} has an unsupported type; "
            f"use {', '.join(FORMATS)}"
        )
    raise CatalogError(
        f"no catalog file for batch {batch!r} in {catalog_dir} "
        f"(looked for {batch}{{{','.join(FORMATS)}}}); add the file or remove the partition"
    )


def _catalog_dict(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row.get("catalog_row") or "{}")


def _prompt_for(settings: PipelineSettings, catalog: dict[str, Any]) -> str:
    if catalog.get("prompt"):
        return str(catalog["prompt"])
    fields = {name for _, name, _, _ in string.Formatter().parse(settings.prompt_template) if name}
    missing = [f for f in fields if f not in catalog or catalog[f] is None]
    if missing:
        raise RequestValidationError(
            f"prompt_template needs catalog column(s) {', '.join(sorted(missing))}, "
            "which this row lacks; add them or change the template"
        )
    return settings.prompt_template.format(**catalog)


def build_product_image_assets(
    pipeline: "ProductImagePipeline", *, pool: str | None = "bria"
) -> list[dg.AssetsDefinition]:
    """The assets of ``pipeline``: ``catalog_batch`` and the steps in ``settings.steps``.

    Args:
        pipeline: name, settings, storage and translator.
        pool: Dagster concurrency pool of the steps that call the backend; cap it in
            ``dagster.yaml`` so that concurrent runs share the fal request limit.
    """
    settings = pipeline.settings
    storage = pipeline.store
    order = [s for s in STEP_ASSETS if s != "source"]
    unknown = [s for s in settings.steps if s not in order]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {order}")
    if list(settings.steps) != order[: len(settings.steps)]:
        raise ValueError(
            f"steps must be a prefix of {order} (each step consumes the one before), "
            f"got {list(settings.steps)}"
        )
    for ratio in settings.aspect_ratios:
        AspectRatio(ratio)
    specs = {step: pipeline.asset_spec(step) for step in ["source", *settings.steps]}

    def step_context(context: AssetExecutionContext, step: str) -> StepContext:
        return StepContext(
            partition=context.partition_key,
            run_id=context.run.run_id,
            asset_key=context.asset_key.to_user_string(),
            code_version=__version__,
            step=step,
            tables=storage.asset_tables(context.asset_key, context.partition_key),
        )

    def asset_args(step: str) -> dict[str, Any]:
        spec = specs[step]
        return dict(
            key=spec.key,
            description=spec.description,
            group_name=spec.group_name,
            owners=spec.owners,
            tags=spec.tags,
            kinds=spec.kinds,
            metadata={**definition_metadata(), **spec.metadata},
            check_specs=check_specs_for(spec.key, step, settings.checks),
            partitions_def=pipeline.partitions_def,
            io_manager_key=pipeline.io_manager_key,
            code_version=__version__,
        )

    @dg.asset(**asset_args("source"))
    def catalog_batch(context: AssetExecutionContext, bria: BriaResource):
        ctx = step_context(context, "source")
        path = find_catalog_file(settings.catalog_dir, context.partition_key)
        batch = load_catalog(path, batch=context.partition_key)
        store = storage.image_store()
        policy = bria.fetch_policy()
        rows: list[dict[str, Any]] = []
        for rej in batch.rejected.to_dict("records"):
            rows.append(
                source_row(
                    ctx,
                    sku=rej["sku"] or f"<row {rej['row_number']}>",
                    image_url="",
                    identity=f"rejected row {rej['row_number']}",
                    catalog_row=row_json(rej),
                    error_class="CatalogRowError",
                    error_message=f"{Path(path).name} row {rej['row_number']}, column "
                    f"{rej['column']}: {rej['reason']}",
                )
            )
        refresh = context.run.tags.get(REFRESH_TAG) == "1"
        previous = {} if refresh else _previous_sources(ctx.tables[:1])
        entries = batch.valid.to_dict("records")

        def reuse(entry: dict[str, Any]) -> dict[str, Any] | None:
            earlier = previous.get((entry["sku"], entry["image_url"]))
            if earlier is None or not store.exists(
                earlier["image_sha256"], earlier["content_type"]
            ):
                return None
            return reused_record(
                earlier, ctx.run_id, catalog_row=row_json(entry), partition=ctx.partition
            )

        async def ingest(
            entry: dict[str, Any], slots: asyncio.Semaphore, client: httpx.AsyncClient
        ) -> dict[str, Any]:
            sku, url, crow = entry["sku"], entry["image_url"], row_json(entry)
            try:
                async with slots:
                    fetched = await fetch_bytes(url, policy, client=client)
                    # Decoding (validation) and storing run off the event loop, in the slot.
                    image = await asyncio.to_thread(
                        decode_image, fetched.data, max_pixels=bria.max_pixels, source=url
                    )
                    stored = await asyncio.to_thread(
                        store.put, fetched.data, sniff_content_type(fetched.data)
                    )
            except BriaError as exc:
                return source_row(
                    ctx,
                    sku=sku,
                    image_url=url,
                    catalog_row=crow,
                    error_class=type(exc).__name__,
                    error_message=str(exc),
                )
            return source_row(
                ctx,
                sku=sku,
                image_url=url,
                catalog_row=crow,
                data=fetched.data,
                content_type=stored.content_type,
                width=image.width,
                height=image.height,
                uri=stored.uri,
            )

        async def ingest_all(to_fetch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            slots = asyncio.Semaphore(settings.fetch_concurrency)
            async with fetch_client(policy) as client:  # one SSL context for the batch
                return list(await asyncio.gather(*(ingest(e, slots, client) for e in to_fetch)))

        started = time.perf_counter()
        to_fetch = []
        for entry in entries:
            reused = reuse(entry)
            if reused is None:
                to_fetch.append(entry)
            else:
                rows.append(reused)
        if to_fetch:  # an unchanged batch opens no HTTP client at all
            rows.extend(asyncio.run(ingest_all(to_fetch)))
        frame = records_to_frame(sorted(rows, key=lambda r: r["sku"]))
        report = StepReport(
            ok=int((frame["status"] == OK).sum()),
            failed=int((frame["status"] == FAILED).sum()),
            reused=int((frame["status"] == REUSED).sum()),
            duration_s=time.perf_counter() - started,
        )
        report.images_written = report.ok
        meta = materialization_metadata(frame, report, backend=bria.selected_backend(), store=store)
        meta.update(
            catalog_file=dg.MetadataValue.path(path),
            catalog_sha256=batch.content_sha256,
            catalog_rows=len(batch.valid) + len(batch.rejected),
            catalog_rows_rejected=len(batch.rejected),
        )
        yield dg.Output(frame, metadata=meta)
        expected = list(batch.valid["sku"]) + [r["sku"] for r in rows if r["status"] == FAILED]
        yield from evaluate_checks(
            context.asset_key, "source", frame, expected, store, settings.checks
        )

    assets: list[dg.AssetsDefinition] = [catalog_batch]

    def make_step(step: str, upstream: dg.AssetKey, plan) -> dg.AssetsDefinition:
        @dg.asset(
            ins={"parents": dg.AssetIn(key=upstream)},
            pool=pool,
            **asset_args(step),
        )
        def step_asset(context: AssetExecutionContext, bria: BriaResource, parents: pd.DataFrame):
            ctx = step_context(context, step)
            jobs = _jobs(parents, plan, lambda p, c: failed_variants(step, p, c))
            store = storage.image_store()
            frame, report = run_step(
                ctx, bria, store, jobs, journal=storage.journal_file(), log=context.log.info
            )
            meta = materialization_metadata(
                frame, report, backend=bria.selected_backend(), store=store
            )
            yield dg.Output(frame, metadata=meta)
            yield from evaluate_checks(
                context.asset_key, step, frame, parents["sku"], store, settings.checks
            )

        return step_asset

    def plan_remove(
        parent: dict[str, Any], catalog: dict[str, Any], planner: RequestPlanner
    ) -> list[Job]:
        return [planner.plan(parent["sku"], "cutout", parent, "remove", {})]

    def plan_replace(
        parent: dict[str, Any], catalog: dict[str, Any], planner: RequestPlanner
    ) -> list[Job]:
        seed = catalog.get("seed") if catalog.get("seed") is not None else settings.seed
        ref = catalog.get("ref_image_url") or (
            None if catalog.get("prompt") else settings.ref_image_url
        )
        arguments: dict[str, Any] = {
            "num_images": settings.num_images,
            "negative_prompt": catalog.get("negative_prompt") or settings.negative_prompt,
        }
        if seed is not None:
            arguments["seed"] = int(seed)
        if ref:
            arguments["ref_image_url"] = ref
        else:
            try:
                arguments["prompt"] = _prompt_for(settings, catalog)
            except BriaError as exc:
                return [Job(parent["sku"], "scene", parent, error=exc)]
        return [planner.plan(parent["sku"], "scene", parent, "replace", arguments)]

    def plan_expand_jobs(
        parent: dict[str, Any], catalog: dict[str, Any], planner: RequestPlanner
    ) -> list[Job]:
        ratios = ratios_for(catalog)
        seed = catalog.get("seed") if catalog.get("seed") is not None else settings.seed
        jobs = []
        for ratio in ratios:
            variant = f"{parent['variant']}@{ratio}"
            try:
                canvas = plan_expand(
                    (int(parent["width"]), int(parent["height"])),
                    canvas_size=None,
                    aspect_ratio=ratio,
                ).canvas
            except BriaError as exc:
                jobs.append(Job(parent["sku"], variant, parent, error=exc))
                continue
            arguments: dict[str, Any] = {"aspect_ratio": ratio, "canvas_size": list(canvas)}
            if seed is not None:
                arguments["seed"] = int(seed)
            jobs.append(planner.plan(parent["sku"], variant, parent, "expand", arguments))
        return jobs

    def ratios_for(catalog: dict[str, Any]) -> list[str]:
        return catalog.get("aspect_ratios") or list(settings.aspect_ratios)

    def failed_variants(step: str, parent: dict[str, Any], catalog: dict[str, Any]) -> list[str]:
        """The variants a failed parent would have had, each recorded as failed."""
        if step == "expand":
            return [f"{parent['variant']}@{ratio}" for ratio in ratios_for(catalog)]
        return ["cutout" if step == "remove" else "scene"]

    plans = {"remove": plan_remove, "replace": plan_replace, "expand": plan_expand_jobs}
    upstream = specs["source"].key
    for step in settings.steps:
        assets.append(make_step(step, upstream, plans[step]))
        upstream = specs[step].key
    return assets


def _jobs(
    parents: pd.DataFrame,
    plan: Callable[[dict[str, Any], dict[str, Any], RequestPlanner], list[Job]],
    failed_variants: Callable[[dict[str, Any], dict[str, Any]], list[str]],
) -> list[Job]:
    """Plan the step's jobs; a failed parent becomes failed rows (no call) for its variants."""
    jobs: list[Job] = []
    planner = RequestPlanner()
    for parent in frame_rows(parents):
        catalog = _catalog_dict(parent)
        if parent["status"] != FAILED:
            jobs.extend(plan(parent, catalog, planner))
            continue
        message = (
            parent["error_message"]
            if parent["error_class"] == "UpstreamFailed"
            else f"upstream {parent['step']} failed for this sku: "
            f"{parent['error_class']}: {parent['error_message']}"
        )
        for variant in failed_variants(parent, catalog):
            jobs.append(
                Job(
                    parent["sku"],
                    variant,
                    parent,
                    error=BriaError(message),
                    error_class="UpstreamFailed",
                )
            )
    return jobs


def _previous_sources(tables: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(sku, source url) -> the usable source record of an earlier run."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in tables:
        table = read_records(path)
        if table is None:
            continue
        usable = pc.is_in(table["status"], pa.array([OK, REUSED]))
        for row in table.filter(usable).to_pylist():
            out[(row["sku"], row["root_source_uri"])] = row
    return out
