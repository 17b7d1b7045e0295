"""Sensor and schedules: new catalog batches start themselves, failures retry daily.

- :func:`build_catalog_sensor` watches the landing location (local folder or
  fsspec URL). A new batch file adds its partition and requests one run. It is
  idempotent without trusting its cursor: a batch whose partition already exists
  is never re-added or re-run; a file whose content changed after its run is
  *reported* (a warning and an ``AssetObservation`` on the batch's partition of
  ``catalog_batch``), not silently re-run.
- :func:`build_retry_schedule` (daily) requests runs for partitions with failed
  or missing rows; earlier ok rows are reused, so only those rows are retried.
- :func:`build_refresh_schedule` re-runs every batch (tag ``bria/refresh``: source
  images are fetched again; outputs whose inputs did not change are still reused).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg
import fsspec

from .assets import REFRESH_TAG
from .batches import catalog_batches
from .errors import CatalogError
from .io_manager import read_table
from .storage import PipelineStorage

if TYPE_CHECKING:
    from .pipeline import ProductImagePipeline

__all__ = [
    "REFRESH_TAG",
    "build_catalog_sensor",
    "build_refresh_schedule",
    "build_retry_schedule",
    "partitions_needing_retry",
]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_catalog_sensor(
    pipeline: ProductImagePipeline, *, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    """A sensor adding a partition and requesting a run for each new batch file."""
    landing = pipeline.settings.catalog_dir
    source_key = pipeline.asset_key("source")
    partitions_def = pipeline.partitions_def
    partitions_name = partitions_def.name

    @dg.sensor(
        name=pipeline.sensor_name,
        job_name=pipeline.job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Starts one run per new catalog batch file in {landing}.",
    )
    def catalog_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(partitions_name))
        new_batches: list[str] = []
        runs: list[dg.RunRequest] = []
        changed: list[dg.AssetObservation] = []
        try:
            files = catalog_batches(landing)
        except CatalogError as exc:  # not there (yet): say so on every tick, add nothing
            return dg.SkipReason(str(exc))
        for batch, path in files.items():
            sha = _sha256(path)
            if batch not in known:
                new_batches.append(batch)
                runs.append(
                    dg.RunRequest(
                        partition_key=batch,
                        run_key=f"{batch}:{sha}",
                        tags={"bria/catalog_file": path, "bria/catalog_sha256": sha[:16]},
                    )
                )
            else:
                # The cursor may be gone (reset, renamed sensor): the last run's record decides.
                before = seen.get(batch) or _materialized_sha(context.instance, source_key, batch)
                if before and before != sha:
                    changed.append(
                        dg.AssetObservation(
                            asset_key=source_key,
                            partition=batch,
                            description="catalog file changed after its run; not re-run",
                            metadata={
                                "catalog_file": dg.MetadataValue.path(path),
                                "previous_sha256": before,
                                "new_sha256": sha,
                            },
                        )
                    )
                    context.log.warning(
                        f"catalog batch {batch!r} changed after its run ({path}: sha256 "
                        f"{before[:12]} -> {sha[:12]}); not re-run automatically. "
                        "Re-materialize the partition to process it (unchanged rows are reused)."
                    )
            seen[batch] = sha
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=(
                [partitions_def.build_add_request(new_batches)] if new_batches else []
            ),
            cursor=json.dumps(seen, sort_keys=True),
            asset_events=changed,
            skip_reason=None if runs else f"no new catalog batch in {landing}",
        )

    return catalog_sensor


def _materialized_sha(instance: dg.DagsterInstance, key: dg.AssetKey, batch: str) -> str | None:
    """The catalog file sha256 recorded by the latest materialization of ``batch``."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[batch]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("catalog_sha256")
    return None if value is None else str(getattr(value, "value", value))


def partitions_needing_retry(
    storage: PipelineStorage | str,
    partitions: Sequence[str],
    assets: Sequence[dg.AssetKey | str],
) -> list[str]:
    """Partitions whose step tables are missing or hold failed rows."""
    storage = PipelineStorage.of(storage)
    needing = []
    for partition in partitions:
        for asset in assets:
            frame = read_table(storage.table_path(asset, partition))
            if frame is None or (frame["status"] == "failed").any():
                needing.append(partition)
                break
    return needing


def build_retry_schedule(
    pipeline: ProductImagePipeline, *, cron_schedule: str = "0 3 * * *"
) -> dg.ScheduleDefinition:
    """Daily: a run for every partition with failed or missing rows (only those rows redo).

    It reads the pipeline's own storage, the same object its IO manager writes to.
    """
    assets = [pipeline.asset_key(step) for step in ("source", *pipeline.settings.steps)]
    storage = pipeline.store
    partitions_name = pipeline.partitions_def.name

    @dg.schedule(
        name=pipeline.retry_schedule_name,
        job_name=pipeline.job_name,
        cron_schedule=cron_schedule,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retries catalog batches that have failed or missing rows.",
    )
    def retry_schedule(context: dg.ScheduleEvaluationContext):
        partitions = context.instance.get_dynamic_partitions(partitions_name)
        needing = partitions_needing_retry(storage, partitions, assets)
        if not needing:
            return dg.SkipReason("every catalog batch is complete: nothing to retry")
        stamp = context.scheduled_execution_time.strftime("%Y%m%d")
        return [
            dg.RunRequest(partition_key=p, run_key=f"retry:{p}:{stamp}", tags={"bria/retry": "1"})
            for p in needing
        ]

    return retry_schedule


def build_refresh_schedule(
    pipeline: ProductImagePipeline, *, cron_schedule: str = "0 4 * * 0"
) -> dg.ScheduleDefinition:
    """Re-runs every batch, re-fetching source images; unchanged outputs are reused."""
    partitions_name = pipeline.partitions_def.name

    @dg.schedule(
        name=pipeline.refresh_schedule_name,
        job_name=pipeline.job_name,
        cron_schedule=cron_schedule,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Whole-catalog refresh: sources re-fetched, only changed work re-run.",
    )
    def refresh_schedule(context: dg.ScheduleEvaluationContext):
        stamp = context.scheduled_execution_time.strftime("%Y%m%d%H%M")
        return [
            dg.RunRequest(partition_key=p, run_key=f"refresh:{p}:{stamp}", tags={REFRESH_TAG: "1"})
            for p in context.instance.get_dynamic_partitions(partitions_name)
        ]

    return refresh_schedule
