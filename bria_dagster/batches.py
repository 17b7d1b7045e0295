"""Catalog batches by hand: add and list a pipeline's partitions without the sensor.

A batch is a dynamic partition of the pipeline's ``<name>_batches`` partitions
definition, kept in the Dagster instance (``DAGSTER_HOME``). The sensor adds one per
new catalog file; ``bria-dagster batches add`` does the same on request, after which
``dagster asset materialize --partition`` / ``dg launch --partition`` can run it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath

import fsspec

from .catalog import FORMATS
from .errors import CatalogError, ConfigurationError

__all__ = [
    "add_batches",
    "catalog_batches",
    "catalog_listing",
    "list_batches",
    "partitions_name",
]


def partitions_name(pipeline: str) -> str:
    """The name of a pipeline's dynamic partitions definition."""
    return f"{pipeline}_batches"


def catalog_batches(catalog_dir: str) -> dict[str, str]:
    """batch name -> catalog file, for every catalog file in ``catalog_dir``."""
    return {batch: info["path"] for batch, info in catalog_listing(catalog_dir).items()}


def catalog_listing(catalog_dir: str) -> dict[str, dict]:
    """batch name -> the listing entry of its catalog file (``fs.ls(detail=True)``: size,
    mtime / ETag / LastModified, ...), with ``"path"`` the file's full path or URL.

    One fresh listing: the filesystem's listing cache for the folder is dropped first
    (s3fs keeps listings forever by default, so a long-lived process would miss new files).
    """
    fs, root = fsspec.core.url_to_fs(catalog_dir)
    fs.invalidate_cache(root)
    if not fs.isdir(root):
        raise CatalogError(
            f"catalog_dir {catalog_dir} does not exist or is not a folder: create it and put "
            f"one <batch>{{{','.join(FORMATS)}}} file per batch in it"
        )
    prefix = catalog_dir.split("://", 1)[0] + "://" if "://" in catalog_dir else ""
    found: dict[str, dict] = {}
    for info in sorted(fs.ls(root, detail=True), key=lambda entry: entry["name"]):
        name = PurePosixPath(info["name"])
        if info.get("type", "file") != "directory" and (
            name.suffix.lower() in FORMATS and not name.name.startswith(".")
        ):
            found.setdefault(name.stem, {**info, "path": prefix + info["name"]})
    return found


def _instance():
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ConfigurationError(
            "DAGSTER_HOME is not set: batches live in the Dagster instance; export "
            "DAGSTER_HOME=/absolute/path/to/your/dagster/home (the one `dagster dev` uses)"
        )
    if not os.path.isabs(home):
        raise ConfigurationError(f"DAGSTER_HOME must be an absolute path, got {home!r}")
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.get()


def add_batches(
    pipeline: str, batches: Sequence[str] = (), *, catalog_dir: str | None = None
) -> tuple[list[str], list[str]]:
    """Add ``batches`` (all catalog files of ``catalog_dir`` when none are named) as
    partitions of ``pipeline``. Returns (added, already there).

    With ``catalog_dir``, each named batch must have its catalog file there.
    """
    files = catalog_batches(catalog_dir) if catalog_dir else None
    wanted = list(batches) or sorted(files or {})
    if not wanted:
        raise CatalogError(
            "no batch to add: name batches, or give --catalog-dir with catalog files in it"
        )
    if files is not None:
        missing = [b for b in wanted if b not in files]
        if missing:
            raise CatalogError(
                f"no catalog file for batch(es) {', '.join(missing)} in {catalog_dir} "
                f"(looked for <batch>{{{','.join(FORMATS)}}}); add the file first"
            )
    instance = _instance()
    try:
        known = set(instance.get_dynamic_partitions(partitions_name(pipeline)))
        added = [b for b in dict.fromkeys(wanted) if b not in known]
        if added:
            instance.add_dynamic_partitions(partitions_name(pipeline), added)
    finally:
        instance.dispose()
    return added, [b for b in wanted if b in known]


def list_batches(pipeline: str) -> list[str]:
    """The batches (partitions) ``pipeline`` has in the instance."""
    instance = _instance()
    try:
        return list(instance.get_dynamic_partitions(partitions_name(pipeline)))
    finally:
        instance.dispose()
