"""Parquet IO manager for the ImageRecord step tables.

Each asset partition is one Parquet file at
``<base>/tables/<asset name>/<partition>.parquet`` (asset key path joined by
``__``), read and written by :mod:`bria_dagster.records.tables`. The base is a local
folder by default or any fsspec URL. Local writes are atomic. Every table written is
added to its asset's reuse index (:mod:`bria_dagster.records.reuse`). A table that only
restates the stored one (an unchanged re-run: every row reused as it was, every failure
met again) is not written
(:func:`~bria_dagster.records.tables.update_table`): the output's ``table_written``
metadata says which.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
from pydantic import Field

from ..records.reuse import ReuseIndex
from ..records.storage import PipelineStorage
from ..records.tables import read_table, records_to_frame, table_path, update_table
from .storage_access import storage_failures

__all__ = ["ImageRecordIOManager"]


class ImageRecordIOManager(dg.ConfigurableIOManager):
    """Stores each step's ImageRecord table as Parquet, one file per partition."""

    base_dir: str = Field(
        default="bria_data", description="Folder or fsspec URL; tables go under <base>/tables."
    )

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        partition = context.partition_key if context.has_partition_key else None
        path = table_path(self.base_dir, context.asset_key, partition)
        with storage_failures(PipelineStorage(self.base_dir)):
            written = update_table(path, obj)
        if written:
            self._index(context, path, obj)
        context.add_output_metadata(
            {"table": dg.MetadataValue.path(path), "table_written": written}
        )

    def _index(self, context: dg.OutputContext, path: str, obj: pd.DataFrame) -> None:
        try:  # derived data: without these entries the table is indexed before the next lookup
            ReuseIndex(self.base_dir, context.asset_key).add_table(path, obj)
        except Exception as exc:
            context.log.warning(
                f"reuse index not updated for {path} ({type(exc).__name__}: {exc}); "
                "the next lookup indexes the table"
            )

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
