"""The step tables of one pipeline's batch, as the audit report reads them.

Every ``<base>/tables/<pipeline>__<asset>/<batch>.parquet`` is listed once (hidden and
underscore names are temporaries and caches); a batch's tables are read with the
ImageRecord schema, only the columns the page shows.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds

from ...errors import BriaError, storage_access, storage_access_error
from ...records.schema import IMAGE_RECORD_SCHEMA
from ..index import RecordTableError

if TYPE_CHECKING:
    from ...records.storage import PipelineStorage

_READ_COLUMNS = (
    "partition",
    "sku",
    "step",
    "variant",
    "status",
    "error_class",
    "error_message",
    "image_uri",
    "image_sha256",
    "width",
    "height",
    "content_type",
    "parent_sha256",
    "root_source_uri",
    "endpoint_id",
    "backend",
    "parameters",
    "seed",
    "request_id",
    "noop_reason",
    "cost_usd",
    "unit_price_usd",
    "duration_s",
    "attempts",
    "run_id",
    "reused_in_run_id",
    "code_version",
    "created_at",
)
_BATCHES_NAMED = 20


class UnknownBatchError(BriaError, LookupError):
    """The storage holds no step table of this batch for this pipeline."""

    def __init__(self, message: str, *, batch: str, known: list[str]) -> None:
        super().__init__(message)
        self.batch = batch
        self.known = known


def storage_base(storage: PipelineStorage | str | os.PathLike[str]) -> str:
    """The base folder or URL of ``storage`` (a PipelineStorage, a path or a URL)."""
    base = getattr(storage, "base", None)  # a PipelineStorage (not imported: no Dagster here)
    return str(base) if base is not None else os.fspath(storage)  # type: ignore[arg-type]


class StepTables:
    """The step tables of one pipeline under a base, listed once."""

    def __init__(self, base: str, pipeline: str) -> None:
        self.base = base
        self.pipeline = pipeline
        self.prefix = f"{pipeline}__"
        self.location = f"{base.rstrip('/')}/tables"
        self.fs, root = fsspec.core.url_to_fs(base)
        self.root = f"{root.rstrip('/')}/tables"
        with storage_access(self.location, "list record tables"):
            found = self.fs.glob(f"{self.root}/*/*.parquet")
        # (folder name, batch, path); hidden or underscore names are temporaries and caches.
        self.all: list[tuple[str, str, str]] = []
        for path in sorted(found):
            folder = posixpath.basename(posixpath.dirname(path))
            name = posixpath.basename(path)
            if name.startswith((".", "_")) or folder.startswith((".", "_")):
                continue
            self.all.append((folder, name[: -len(".parquet")], path))
        self.files = [entry for entry in self.all if entry[0].startswith(self.prefix)]

    def of_batch(self, batch: str) -> list[tuple[str, str]]:
        """``(asset name, path)`` of every table of ``batch``; raises when there is none."""
        found = [(f[len(self.prefix) :], p) for f, b, p in self.files if b == batch]
        if found:
            return found
        known = sorted({b for _, b, _ in self.files})
        where = f"pipeline {self.pipeline!r} under {self.location}"
        if known:
            shown = ", ".join(known[:_BATCHES_NAMED])
            if len(known) > _BATCHES_NAMED:
                shown += f" and {len(known) - _BATCHES_NAMED} more"
            hint = f"its batches are: {shown}"
        else:
            others = sorted({f.split("__", 1)[0] for f, _, _ in self.all if "__" in f})
            hint = "it has no tables there"
            if others:
                hint += f" (the tables there are of pipeline(s) {', '.join(others)})"
            else:
                hint += " (run the pipeline first, or check the storage base)"
        raise UnknownBatchError(f"no batch {batch!r} in {where}; {hint}", batch=batch, known=known)

    def read(self, path: str) -> list[dict[str, Any]]:
        url = f"{self.location}/{path.rsplit('/', 2)[-2]}/{posixpath.basename(path)}"
        try:
            dataset = ds.dataset(
                path, schema=IMAGE_RECORD_SCHEMA, format="parquet", filesystem=self.fs
            )
            return dataset.to_table(columns=list(_READ_COLUMNS)).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            refused = storage_access_error(url, exc, "read record table")
            if refused is not None:
                raise refused from exc
            raise RecordTableError(
                f"cannot read record table {url} with the ImageRecord schema: {exc}"
            ) from exc
