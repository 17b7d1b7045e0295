"""Parquet IO manager for the ImageRecord step tables.

Each asset partition is one Parquet file at
``<base>/tables/<asset name>/<partition>.parquet`` (asset key path joined by
``__``), written with :data:`~bria_dagster.records.schema.IMAGE_RECORD_SCHEMA`. The
base is a local folder by default or any fsspec URL. Local writes are atomic.
Every table written is added to its asset's reuse index (:mod:`bria_dagster.records.reuse`).
"""

from __future__ import annotations

import io

import dagster as dg
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from ..errors import storage_access
from ..records.reuse import ReuseIndex
from ..records.schema import IMAGE_RECORD_SCHEMA, frame_to_table, records_to_frame
from ..records.storage import PipelineStorage
from ..records.store import write_bytes
from .storage_access import storage_failures

__all__ = ["ImageRecordIOManager", "read_records", "read_table", "table_path"]


def table_path(base: str, asset_key: dg.AssetKey | str, partition: str | None) -> str:
    """Where the records of one asset partition live (:meth:`PipelineStorage.table_path`)."""
    return PipelineStorage.of(base).table_path(asset_key, partition)


def read_records(path: str) -> pa.Table | None:
    """The records at ``path`` as an Arrow table, or ``None`` when none were written yet."""
    fs, root = fsspec.core.url_to_fs(path)
    with storage_access(path, "read record table"):
        if not fs.exists(root):
            return None
        with fs.open(root, "rb") as fh:
            return pq.read_table(fh, schema=IMAGE_RECORD_SCHEMA)


def read_table(path: str) -> pd.DataFrame | None:
    """The records at ``path``, or ``None`` when no such table was written yet."""
    table = read_records(path)
    return None if table is None else table.to_pandas()


def write_table(path: str, frame: pd.DataFrame) -> None:
    fs, root = fsspec.core.url_to_fs(path)
    buf = io.BytesIO()
    pq.write_table(frame_to_table(frame), buf, compression="zstd")
    with storage_access(path, "write record table"):
        write_bytes(fs, root, buf.getvalue())


class ImageRecordIOManager(dg.ConfigurableIOManager):
    """Stores each step's ImageRecord table as Parquet, one file per partition."""

    base_dir: str = Field(
        default="bria_data", description="Folder or fsspec URL; tables go under <base>/tables."
    )

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        partition = context.partition_key if context.has_partition_key else None
        path = table_path(self.base_dir, context.asset_key, partition)
        with storage_failures(PipelineStorage(self.base_dir)):
            write_table(path, obj)
        try:  # derived data: without these entries the table is indexed before the next lookup
            ReuseIndex(self.base_dir, context.asset_key).add_table(path, obj)
        except Exception as exc:
            context.log.warning(
                f"reuse index not updated for {path} ({type(exc).__name__}: {exc}); "
                "the next lookup indexes the table"
            )
        context.add_output_metadata({"table": dg.MetadataValue.path(path)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        partition = context.partition_key if context.has_partition_key else None
        path = table_path(self.base_dir, context.asset_key, partition)
        with storage_failures(PipelineStorage(self.base_dir)):
            frame = read_table(path)
        if frame is None:
            raise FileNotFoundError(
                f"no records at {path}: materialize {context.asset_key.to_user_string()} "
                f"for partition {partition!r} first"
            )
        return frame if len(frame) else records_to_frame([])
