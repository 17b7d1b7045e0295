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

import base64
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import dagster as dg
import fsspec

from ..errors import CatalogError
from ..records.schema import FAILED
from ..records.storage import PipelineStorage
from ..records.tables import read_table
from ..steps.settings import REFRESH_TAG
from .batches import catalog_listing

if TYPE_CHECKING:
    from .identity import PipelineIdentity

__all__ = [
    "REFRESH_TAG",
    "build_catalog_sensor",
    "build_refresh_schedule",
    "build_retry_schedule",
    "partitions_needing_retry",
]


#: Listing fields that change when a file's content changes, in order of preference:
#: a content digest from the store (S3/GCS/Azure) beats a modification time.
_CONTENT_FIELDS = ("ETag", "etag", "md5Hash", "content_md5", "crc32c", "checksum")
_TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "generation")
#: Each file's cursor entry: 3 bytes of blake2b(batch) then 4 of blake2b(batch, signature).
#: A changed file passes for unchanged with odds ~2**-32 (the name part must match too);
#: a batch new to the cursor passes for one seen before with odds ~files/2**24.
_NAME_BYTES, _SIGNATURE_BYTES = 3, 4
_ENTRY_BYTES = _NAME_BYTES + _SIGNATURE_BYTES
_NO_SIGNATURE = b"\0" * _SIGNATURE_BYTES
_CURSOR_PREFIX = "v2:"
_HASH_THREADS = 16
_WHOLE_READ_LIMIT = 32 << 20  # smaller files are fetched in one GET, larger ones streamed


def file_signature(info: dict) -> str | None:
    """A compact stand-in for a file's content, from its listing entry alone.

    Size plus the store's content digest (ETag...) when it has one, else size plus its
    modification time. ``None`` when the listing gives neither: the file is then hashed
    on every tick.
    """
    for fields in (_CONTENT_FIELDS, _TIME_FIELDS):
        for field in fields:
            value = info.get(field)
            if value is not None and value != "":
                return f"{info.get('size')}|{field}={value}"
    return None


def _entry(batch: str, signature: str | None) -> bytes:
    name = hashlib.blake2b(batch.encode(), digest_size=_NAME_BYTES).digest()
    if signature is None:
        return name + _NO_SIGNATURE
    key = f"{batch}\0{signature}".encode()
    return name + hashlib.blake2b(key, digest_size=_SIGNATURE_BYTES).digest()


def encode_cursor(entries: set[bytes]) -> str:
    """The sorted per-file entries, packed, zlib-compressed and base64-encoded."""
    packed = b"".join(sorted(entries))
    return _CURSOR_PREFIX + base64.b64encode(zlib.compress(packed, 9)).decode("ascii")


def decode_cursor(cursor: str | None) -> tuple[set[bytes] | None, dict[str, str]]:
    """(entries, legacy {batch: sha256}); entries is None when there is no usable cursor."""
    if not cursor:
        return None, {}
    if cursor.startswith(_CURSOR_PREFIX):
        try:
            packed = zlib.decompress(base64.b64decode(cursor[len(_CURSOR_PREFIX) :]))
        except (ValueError, zlib.error):
            return None, {}
        n = _ENTRY_BYTES
        return {packed[i : i + n] for i in range(0, len(packed), n)}, {}
    try:  # the cursor of earlier versions: JSON {batch: sha256}
        legacy = json.loads(cursor)
    except ValueError:
        return None, {}
    return None, {str(k): str(v) for k, v in legacy.items()} if isinstance(legacy, dict) else {}


def _sha256_of(fs, path: str, size: int | None) -> str:
    digest = hashlib.sha256()
    if size is not None and size <= _WHOLE_READ_LIMIT:
        digest.update(fs.cat_file(path))  # one GET
    else:
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_files(infos: dict[str, dict]) -> dict[str, str]:
    """batch -> sha256 of its catalog file, the files read concurrently."""
    if not infos:
        return {}

    def one(info: dict) -> str:
        fs, path = fsspec.core.url_to_fs(info["path"])
        return _sha256_of(fs, path, info.get("size"))

    if len(infos) == 1:
        [(batch, info)] = infos.items()
        return {batch: one(info)}
    with ThreadPoolExecutor(min(_HASH_THREADS, len(infos))) as pool:
        return dict(zip(infos, pool.map(one, infos.values()), strict=True))


def build_catalog_sensor(
    pipeline: PipelineIdentity, *, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    """A sensor adding a partition and requesting a run for each new batch file.

    Each tick lists the landing location once (with details) and reads only the files
    that are new or whose signature (size + ETag, or size + mtime) differs from the one
    in its cursor (7 bytes per file, zlib + base64). Which batches exist is decided by
    the instance's partitions (one query), never by the cursor. A file the cursor does
    not know (cursor lost or reset, partition added by hand) whose partition exists is
    compared with the ``catalog_sha256`` its latest materialization recorded (two
    queries for all such batches; those files are read); one never materialized is
    taken as seen.
    """
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
        seen, legacy = decode_cursor(context.cursor)
        try:
            files = catalog_listing(landing)
        except CatalogError as exc:  # not there (yet): say so on every tick, add nothing
            return dg.SkipReason(str(exc))
        known = set(context.instance.get_dynamic_partitions(partitions_name))
        signatures = {batch: file_signature(info) for batch, info in files.items()}
        entries = {batch: _entry(batch, signature) for batch, signature in signatures.items()}
        new = {b: info for b, info in files.items() if b not in known}
        seen = seen or set()
        seen_names = {entry[:_NAME_BYTES] for entry in seen}
        # Known batches to read: a signature different from the one seen last (changed),
        # or a batch the cursor does not know (cursor lost, partition added elsewhere):
        # compared with what its latest run recorded; never materialized = taken as seen.
        resigned, unseen = {}, {}
        for batch, info in files.items():
            entry, signed = entries[batch], signatures[batch] is not None
            if batch not in known or (signed and entry in seen):
                continue
            if signed and entry[:_NAME_BYTES] in seen_names:
                resigned[batch] = info
            else:
                unseen[batch] = info
        baseline = _materialized_shas(context.instance, source_key, resigned.keys() | unseen.keys())
        baseline.update({b: sha for b, sha in legacy.items() if b in unseen})
        suspects = {**resigned, **{b: info for b, info in unseen.items() if b in baseline}}
        shas = _hash_files({**new, **suspects})

        runs = [
            dg.RunRequest(
                partition_key=batch,
                run_key=f"{batch}:{shas[batch]}",
                tags={"bria/catalog_file": info["path"], "bria/catalog_sha256": shas[batch][:16]},
            )
            for batch, info in new.items()
        ]
        changed: list[dg.AssetObservation] = []
        for batch, info in suspects.items():
            sha, before = shas[batch], baseline.get(batch)
            if before == sha or (before is None and batch not in resigned):
                continue
            path = info["path"]
            changed.append(
                dg.AssetObservation(
                    asset_key=source_key,
                    partition=batch,
                    description="catalog file changed after its run; not re-run",
                    metadata={
                        "catalog_file": dg.MetadataValue.path(path),
                        "previous_sha256": before or "unknown (never materialized)",
                        "new_sha256": sha,
                    },
                )
            )
            context.log.warning(
                f"catalog batch {batch!r} changed after its run ({path}: sha256 "
                f"{(before or 'unknown')[:12]} -> {sha[:12]}); not re-run automatically. "
                "Re-materialize the partition to process it (unchanged rows are reused)."
            )
        cursor = encode_cursor(set(entries.values()))
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=(
                [partitions_def.build_add_request(list(new))] if new else []
            ),
            cursor=cursor,
            asset_events=changed,
            skip_reason=None if runs else f"no new catalog batch in {landing}",
        )

    return catalog_sensor


def _materialized_shas(
    instance: dg.DagsterInstance, key: dg.AssetKey, batches: Iterable[str]
) -> dict[str, str]:
    """batch -> the catalog file sha256 recorded by its latest materialization.

    Two queries however many batches: the latest storage id per partition, then
    those records (in chunks of 500 ids).
    """
    wanted = set(batches)
    if not wanted:
        return {}
    latest = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=wanted
    )
    ids = sorted(latest.values())
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        ).records
        for record in records:
            event = record.asset_materialization
            value = event.metadata.get("catalog_sha256") if event else None
            if event is not None and event.partition and value is not None:
                found[event.partition] = str(getattr(value, "value", value))
    return found


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
            frame = read_table(storage.table_path(asset, partition), ["status"])
            if frame is None or (frame["status"] == FAILED).any():
                needing.append(partition)
                break
    return needing


def build_retry_schedule(
    pipeline: PipelineIdentity, *, cron_schedule: str = "0 3 * * *"
) -> dg.ScheduleDefinition:
    """Daily: a run for every partition with failed or missing rows (only those rows redo).

    It reads the pipeline's own storage, the same object its IO manager writes to.
    """
    assets = [pipeline.asset_key(step) for step in ("source", *pipeline.settings.steps)]
    storage = pipeline.store
    return _batch_schedule(
        pipeline,
        name=pipeline.retry_schedule_name,
        cron_schedule=cron_schedule,
        description="Retries catalog batches that have failed or missing rows.",
        purpose="retry",
        stamp_format="%Y%m%d",
        tags={"bria/retry": "1"},
        pick=lambda partitions: partitions_needing_retry(storage, partitions, assets),
        none_picked="every catalog batch is complete: nothing to retry",
    )


def build_refresh_schedule(
    pipeline: PipelineIdentity, *, cron_schedule: str = "0 4 * * 0"
) -> dg.ScheduleDefinition:
    """Re-runs every batch, re-fetching source images; unchanged outputs are reused."""
    return _batch_schedule(
        pipeline,
        name=pipeline.refresh_schedule_name,
        cron_schedule=cron_schedule,
        description="Whole-catalog refresh: sources re-fetched, only changed work re-run.",
        purpose="refresh",
        stamp_format="%Y%m%d%H%M",
        tags={REFRESH_TAG: "1"},
    )


def _batch_schedule(
    pipeline: PipelineIdentity,
    *,
    name: str,
    cron_schedule: str,
    description: str,
    purpose: str,
    stamp_format: str,
    tags: Mapping[str, str],
    pick: Callable[[Sequence[str]], list[str]] = list,
    none_picked: str | None = None,
) -> dg.ScheduleDefinition:
    """A schedule (stopped until turned on) of the pipeline's job: one run per catalog
    batch that ``pick`` keeps (every batch by default), keyed ``<purpose>:<batch>:<tick
    time as stamp_format>`` so that a tick requests each batch once; a skip saying
    ``none_picked`` when it keeps none."""
    partitions_name = pipeline.partitions_def.name

    @dg.schedule(
        name=name,
        job_name=pipeline.job_name,
        cron_schedule=cron_schedule,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=description,
    )
    def batch_schedule(context: dg.ScheduleEvaluationContext):
        picked = pick(context.instance.get_dynamic_partitions(partitions_name))
        if not picked and none_picked:
            return dg.SkipReason(none_picked)
        stamp = context.scheduled_execution_time.strftime(stamp_format)
        return [
            dg.RunRequest(partition_key=p, run_key=f"{purpose}:{p}:{stamp}", tags=dict(tags))
            for p in picked
        ]

    return batch_schedule
