"""The asset factory: catalog batch -> cutouts -> scenes -> expansions, partitioned by batch.

``build_product_image_assets`` returns the software-defined assets (and their
checks) for one pipeline. Every asset's value is an ImageRecord table, one row
per output image or failure, stored by :class:`ImageRecordIOManager`.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext

from .._version import __version__
from ..errors import BriaError, CatalogError
from ..lineage.report import write_audit_report
from ..records.reuse import ReuseIndex
from ..records.schema import OK, REUSED
from ..records.storage import PipelineStorage
from ..records.tables import frame_rows, read_records, read_table
from ..steps.chain import ChainStep, StepChain
from ..steps.export import export_channel
from ..steps.ingest import ingest_sources, load_batch_catalog
from ..steps.packshot import COMPLIANCE_ERROR, run_packshots
from ..steps.planning import StepPlanner
from ..steps.registry import step_named
from ..steps.rows import StepContext
from ..steps.settings import REFRESH_TAG, PipelineSettings
from ..steps.step import SOURCE
from .batches import pipeline_marker
from .checks import (
    batch_failure,
    batch_outcome,
    check_specs_for,
    compliance_results,
    evaluate_checks,
)
from .metadata import definition_metadata, materialization_metadata
from .pool_wait import sleep_between_claim_checks
from .report_metadata import audit_report_metadata
from .resource import BriaResource
from .storage_access import guarded, resolve_journal_url

if TYPE_CHECKING:
    from .identity import PipelineIdentity

__all__ = [
    "REFRESH_TAG",
    "PipelineSettings",
    "build_product_image_assets",
]


def build_product_image_assets(
    pipeline: "PipelineIdentity", *, pool: str | None = "bria"
) -> list[dg.AssetsDefinition]:
    """The assets of ``pipeline``: ``catalog_batch`` and the steps in ``settings.steps``.

    Args:
        pipeline: name, settings, storage and translator.
        pool: Dagster concurrency pool of the steps that call the backend; cap it in
            ``dagster.yaml`` so that concurrent runs share the fal request limit.
    """
    settings = pipeline.settings
    storage = pipeline.store
    specs = {step: pipeline.asset_spec(step) for step in ["source", *settings.steps]}
    if pool is not None:
        sleep_between_claim_checks()  # a run waiting for a slot of `pool` must not spin

    def step_context(
        context: AssetExecutionContext, step: str, key: dg.AssetKey | None = None
    ) -> StepContext:
        key = key or context.asset_key
        return StepContext(
            partition=context.partition_key,
            run_id=context.run.run_id,
            asset_key=key.to_user_string(),
            code_version=__version__,
            step=step,
        )

    def asset_args(step: str) -> dict[str, Any]:
        spec = specs[step]
        # catalog_batch names its pipeline and catalog folder, after the translation (which
        # may change keys and metadata): `bria-dagster batches add` finds pipelines by it.
        marker = pipeline_marker(pipeline.name, settings.catalog_dir) if step == "source" else {}
        return dict(
            **_spec_args(pipeline, spec),
            metadata={**definition_metadata(), **spec.metadata, **marker},
            check_specs=check_specs_for(spec.key, step, settings.checks),
            io_manager_key=pipeline.io_manager_key,
        )

    @dg.asset(**asset_args("source"))
    @guarded(storage)  # storage refused (wrong S3 credentials): one dg.Failure that says so
    def catalog_batch(context: AssetExecutionContext, bria: BriaResource):
        try:
            catalog = load_batch_catalog(settings.catalog_dir, context.partition_key)
        except CatalogError as exc:  # the whole batch is unusable: fail the step, say why
            raise dg.Failure(
                description=str(exc),
                metadata={
                    "error_class": type(exc).__name__,
                    "batch": context.partition_key,
                    "catalog_dir": dg.MetadataValue.path(settings.catalog_dir),
                },
                allow_retries=False,
            ) from exc
        store = storage.image_store()
        refresh = context.run.tags.get(REFRESH_TAG) == "1"
        own = storage.table_path(context.asset_key, context.partition_key)
        sources = ingest_sources(
            step_context(context, "source"),
            catalog,
            store=store,
            policy=bria.fetch_policy(),
            max_pixels=bria.max_pixels,
            concurrency=settings.fetch_concurrency,
            earlier={} if refresh else _previous_sources(own),
        )
        meta = materialization_metadata(
            sources.frame,
            sources.report,
            backend=bria.selected_backend(),
            store=store,
            preview_rows=settings.preview_rows,
        )
        meta.update(
            catalog_file=dg.MetadataValue.path(catalog.source_path),
            catalog_sha256=catalog.content_sha256,
            catalog_rows=len(catalog.valid) + len(catalog.rejected),
            catalog_rows_rejected=len(catalog.rejected),
        )
        yield dg.Output(sources.frame, metadata=meta)
        results = evaluate_checks(
            context.asset_key,
            "source",
            sources.frame,
            sources.expected_skus,
            store,
            settings.checks,
        )
        yield from results
        # The batch's verdict is given by the last asset of the run that writes records: the
        # image steps when they follow (they record every product, failed ones too, so each
        # step's table is written before the run fails), else this one.
        blocked = any(
            r.check_name == "failure_rate"
            and not r.passed
            and r.severity == dg.AssetCheckSeverity.ERROR
            for r in results
        )
        steps_follow = any(_in_run(context, specs[s].key) for s in settings.steps)
        if blocked or not steps_follow:
            _fail_if_batch_failed(context, pipeline, [sources.frame])

    assets = [catalog_batch]
    if settings.steps:
        assets.append(_image_steps(pipeline, specs, asset_args, step_context, pool))
    if settings.packshots.channels:
        if "remove" not in settings.steps:
            raise ValueError(
                "packshots need the remove step (a packshot is a cutout on a channel's "
                "canvas): add 'remove' to steps, or leave packshots.channels empty"
            )
        assets.extend(_packshot_assets(pipeline, specs["remove"].key, step_context))
    if settings.report:
        assets.append(_report_asset(pipeline, [a.keys for a in assets]))
    return assets


_SPEC_FIELDS = ("key", "description", "group_name", "owners", "tags", "kinds")
"""What an asset takes from its translated spec as it is."""


def _spec_args(pipeline: "PipelineIdentity", spec: dg.AssetSpec) -> dict[str, Any]:
    """What every pipeline asset takes from its translated spec, and its partitions and
    code version (the caller adds metadata, checks, IO manager, inputs)."""
    return {
        **{name: getattr(spec, name) for name in _SPEC_FIELDS},
        "partitions_def": pipeline.partitions_def,
        "code_version": __version__,
    }


def _packshot_assets(
    pipeline: "PipelineIdentity",
    cutouts_key: dg.AssetKey,
    step_context: Callable[[AssetExecutionContext, str, dg.AssetKey], StepContext],
) -> list[dg.AssetsDefinition]:
    """``product_packshots`` (records, reuse, per-channel compliance checks) and
    ``channel_exports`` (files and manifests per channel)."""
    settings, storage = pipeline.settings, pipeline.store
    options = settings.packshots
    presets = options.resolved()  # an unknown channel fails here, when definitions load
    channels = [p.name for p in presets]
    spec = pipeline.asset_spec("packshot")
    key = spec.key

    @dg.asset(
        **_spec_args(pipeline, spec),
        metadata={
            **definition_metadata(),
            **spec.metadata,
            "bria/channels": ", ".join(channels),
        },
        check_specs=check_specs_for(key, "packshot", settings.checks, channels=channels),
        io_manager_key=pipeline.io_manager_key,
        ins={"cutouts": dg.AssetIn(key=cutouts_key)},
    )
    @guarded(storage)
    def product_packshots(context: AssetExecutionContext, cutouts: pd.DataFrame):
        store = storage.image_store()
        frame, report = run_packshots(
            step_context(context, "packshot", key),
            frame_rows(cutouts),
            presets,
            store,
            ReuseIndex(storage, key, partition=context.partition_key).lookup,
            workers=options.workers,
        )
        context.log.info(
            f"packshots for {len(channels)} channel(s): {report.ok} made, "
            f"{report.reused} reused, {report.failed} failed"
        )
        meta = materialization_metadata(
            frame, report, backend="local", store=store, preview_rows=settings.preview_rows
        )
        yield dg.Output(frame, metadata=meta)
        yield from evaluate_checks(
            key, "packshot", frame, list(cutouts["sku"]), store, settings.checks
        )
        yield from compliance_results(key, frame, channels, COMPLIANCE_ERROR)

    export_spec = pipeline.asset_spec("export")
    export_to = options.export_to or f"{storage.base.rstrip('/')}/exports"

    @dg.asset(
        **_spec_args(pipeline, export_spec),
        metadata={**export_spec.metadata, "bria/export_to": dg.MetadataValue.path(export_to)},
        ins={"packshots": dg.AssetIn(key=key, input_manager_key=pipeline.io_manager_key)},
    )
    @guarded(storage)
    def channel_exports(context: AssetExecutionContext, packshots: pd.DataFrame):
        store = storage.image_store()
        meta: dict[str, Any] = {}
        written = 0
        for channel in channels:
            done = export_channel(
                packshots,
                channel,
                batch=context.partition_key,
                export_to=export_to,
                store=store,
                filename_template=options.filename_template,
            )
            written += len(done.written)
            meta.update(done.metadata())
            meta[f"{channel}.manifest"] = dg.MetadataValue.path(done.manifest)
        meta["files_written"] = written
        meta["export_to"] = dg.MetadataValue.path(export_to)
        return dg.MaterializeResult(metadata=meta)

    return [product_packshots, channel_exports]


def _report_asset(pipeline: "PipelineIdentity", upstream: list[Any]) -> dg.AssetsDefinition:
    """``audit_report``: the batch's HTML audit report, linked from its metadata (an http
    link with ``report_url_base``), and what each product became (``products``). An
    unchanged batch keeps its page (``report_reused``, no file written)."""
    storage = pipeline.store
    spec = pipeline.asset_spec("report")
    deps = sorted({k for keys in upstream for k in keys}, key=lambda k: k.to_user_string())

    @dg.asset(**_spec_args(pipeline, spec), metadata=dict(spec.metadata), deps=deps)
    @guarded(storage)
    def audit_report(context: AssetExecutionContext) -> dg.MaterializeResult:
        written = write_audit_report(storage, context.partition_key, pipeline=pipeline.name)
        kept = "kept" if written.work.reused else "written"
        context.log.info(f"audit report {kept}: {written.work.reason}")
        settings = pipeline.settings
        return dg.MaterializeResult(
            metadata=audit_report_metadata(
                written, url_base=settings.report_url_base, products=settings.preview_rows
            )
        )

    return audit_report


def _image_steps(
    pipeline: "PipelineIdentity",
    specs: dict[str, dg.AssetSpec],
    asset_args: Callable[[str], dict[str, Any]],
    step_context: Callable[[AssetExecutionContext, str, dg.AssetKey], StepContext],
    pool: str | None,
) -> dg.AssetsDefinition:
    """The steps as one multi-asset: each product streams through every selected step.

    Every step stays its own asset (table, lineage rows, reuse, checks, metadata);
    selecting one step alone reads its parents' table from the pipeline's storage.
    """
    settings, storage = pipeline.settings, pipeline.store
    steps = list(settings.steps)  # parents first
    parent_of = {step: step_named(step).parent for step in steps}
    step_specs, check_specs = [], []
    for step in steps:
        args = asset_args(step)
        step_specs.append(
            specs[step]
            .replace_attributes(
                deps=[specs[parent_of[step]].key],
                partitions_def=args["partitions_def"],
                code_version=args["code_version"],
                kinds=args["kinds"],
                metadata=args["metadata"],
            )
            .with_io_manager_key(args["io_manager_key"])
        )
        check_specs.extend(args["check_specs"])

    @dg.multi_asset(
        name=f"{pipeline.name}_image_steps",
        specs=step_specs,
        check_specs=check_specs,
        can_subset=True,
        partitions_def=pipeline.partitions_def,
        ins={"sources": dg.AssetIn(key=specs[SOURCE].key)},
        pool=pool,
        description=f"The steps {', '.join(steps)}: each product carried through every "
        "selected step as soon as its parent image is ready.",
    )
    @guarded(storage)
    def image_steps(context: AssetExecutionContext, bria: BriaResource, sources: pd.DataFrame):
        selected = [s for s in steps if specs[s].key in context.selected_asset_keys]
        checks = context.selected_asset_check_keys
        store = storage.image_store()
        journal, setting = resolve_journal_url(storage, context.instance)
        bria.open_journal(journal, setting=setting)  # fails here, before any request is sent
        produced = [sources]  # every table of this run, in step order, for the verdict
        tables = {SOURCE: sources}  # this run's tables, by step
        for start, group in _chains(parent_of, selected).items():
            parents = tables.get(start)
            if parents is None:
                parents = _stored_parents(context, storage, specs[start].key)
            chain = StepChain(
                [
                    ChainStep(
                        ctx=step_context(context, step, specs[step].key),
                        plan=StepPlanner(settings, step).jobs,
                        reuse=ReuseIndex(
                            storage, specs[step].key, partition=context.partition_key
                        ).lookup,
                    )
                    for step in group
                ],
                bria.get_client(context),
                store,
                journal=journal,
                log=context.log.info,
            )
            # Each step's table is stored, described and checked as soon as the step is
            # complete, while the products still in later steps go on.
            for index, frame, report in chain.stream(frame_rows(parents)):
                step = group[index]
                key = specs[step].key
                yield dg.Output(
                    frame,
                    output_name=key.to_python_identifier(),
                    metadata=materialization_metadata(
                        frame,
                        report,
                        backend=bria.selected_backend(),
                        store=store,
                        preview_rows=settings.preview_rows,
                    ),
                )
                expected = list(tables.get(parent_of[step], parents)["sku"])
                for result in evaluate_checks(key, step, frame, expected, store, settings.checks):
                    if dg.AssetCheckKey(key, result.check_name) in checks:
                        yield result
                tables[step] = frame
                produced.append(frame)
        # Every selected step's table is stored: now the batch's verdict.
        _fail_if_batch_failed(context, pipeline, produced)

    return image_steps


def _in_run(context: AssetExecutionContext, key: dg.AssetKey) -> bool:
    """Whether this run materializes ``key``: the run's asset selection when it names
    one (a launched subset), else the job's (``dg.materialize`` leaves the run's empty)."""
    selection = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    return key in selection


def _fail_if_batch_failed(
    context: AssetExecutionContext, pipeline: "PipelineIdentity", frames: list[pd.DataFrame]
) -> None:
    """Raise the batch's ``dg.Failure`` when more than ``checks.fail_run_above`` of its
    products (or all of them) failed in ``frames`` (its step tables, in step order, already
    stored). The audit report is written first when the run was to write it, since its
    asset will not run after a failed step."""
    settings = pipeline.settings
    outcome = batch_outcome(frames)
    if not outcome.fails_run(settings.checks.fail_run_above):
        return
    batch = context.partition_key
    written = None
    if settings.report and _in_run(context, pipeline.asset_key("report")):
        try:
            report = write_audit_report(pipeline.store, batch, pipeline=pipeline.name)
            written = report.path or report.url
        except BriaError as exc:  # the batch's own failure matters more: report it, go on
            context.log.warning(
                f"could not write the audit report of batch {batch!r} before failing the "
                f"run: {type(exc).__name__}: {exc}"
            )
    raise batch_failure(batch, outcome, settings.checks, audit_report=written)


def _chains(parent_of: dict[str, str], selected: list[str]) -> dict[str, list[str]]:
    """``selected`` (parents first) as chains, by the step whose rows each starts from: a
    step joins its parent's chain when its parent is selected, else it starts from its
    parent's rows (the source's, or a stored table)."""
    start: dict[str, str] = {}
    chains: dict[str, list[str]] = {}
    for step in selected:
        parent = parent_of[step]
        start[step] = start.get(parent, parent)
        chains.setdefault(start[step], []).append(step)
    return chains


def _stored_parents(
    context: AssetExecutionContext, storage: PipelineStorage, key: dg.AssetKey
) -> pd.DataFrame:
    """The parent step's table of this partition, for a step selected without it."""
    frame = read_table(storage.table_path(key, context.partition_key))
    if frame is None:
        raise dg.Failure(
            description=f"{key.to_user_string()} has no records for batch "
            f"{context.partition_key!r} yet: materialize it first (or select it too)",
            metadata={"batch": context.partition_key, "missing_asset": key.to_user_string()},
        )
    return frame


def _previous_sources(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(sku, source url) -> the usable source record of an earlier run of the partition
    whose table is at ``path`` (sources are reused within their own batch only)."""
    table = read_records(path)
    if table is None:
        return {}
    usable = pc.is_in(table["status"], pa.array([OK, REUSED]))
    return {(row["sku"], row["root_source_uri"]): row for row in table.filter(usable).to_pylist()}
