"""The step tables of one pipeline's batch, as the audit report reads them.

Every ``<base>/tables/<pipeline>__<asset>/<batch>.parquet`` is listed once
(:func:`~bria_dagster.records.listing.scan_tables`); a batch's tables are read by the
one table reader, only the columns the page shows
(:data:`~bria_dagster.records.schema.REPORT_COLUMNS`).
"""

from __future__ import annotations

from typing import Any

from ...errors import UnknownBatchError
from ...records.listing import scan_tables, tables_location
from ...records.schema import REPORT_COLUMNS
from ...records.tables import read_records

_BATCHES_NAMED = 20


class StepTables:
    """The step tables of one pipeline under a base, listed once."""

    def __init__(self, base: str, pipeline: str) -> None:
        self.base = base
        self.pipeline = pipeline
        self.prefix = f"{pipeline}__"
        self.location = f"{base.rstrip('/')}/tables"
        tables = tables_location(base).rstrip("/")
        # (folder name, batch, path) of every step table, in a fixed order.
        self.all: list[tuple[str, str, str]] = []
        for relative in sorted(scan_tables(tables)):
            folder, name = relative.split("/")
            self.all.append((folder, name[: -len(".parquet")], f"{tables}/{relative}"))
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

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        """The rows of the table at ``path``, the columns the report shows."""
        table = read_records(path, REPORT_COLUMNS)
        return [] if table is None else table.to_pylist()
