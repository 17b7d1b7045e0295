"""The entries of the reuse index: which outputs an earlier request with a fingerprint made.

One entry per (fingerprint, output) of an ok or reused record, carrying what a
reused record keeps from the record that made the image
(:data:`~bria_dagster.records.schema.PRODUCER_COLUMNS`). Pure Arrow: where the entries
are stored and how they are found is :mod:`bria_dagster.records.reuse`.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import FINGERPRINT, OK, PRODUCER_COLUMNS, REUSED
from .tables import IMAGE_RECORD_SCHEMA, frame_to_table

__all__ = ["INDEX_SCHEMA", "READ_COLUMNS", "conform", "entries_of", "newest", "row_group_ranges"]

INDEX_SCHEMA = pa.schema(
    [
        pa.field(FINGERPRINT, pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        *(IMAGE_RECORD_SCHEMA.field(name) for name in PRODUCER_COLUMNS),
    ]
)
READ_COLUMNS = ["status", "variant", FINGERPRINT, *PRODUCER_COLUMNS]
"""The columns of a step table that indexing reads."""
_FEW = 256  # rows below which the newest-part rule runs in Python


def entries_of(records: pd.DataFrame | pa.Table) -> pa.Table:
    """The index entries of ImageRecord rows: the ok and reused rows with a fingerprint,
    one per (fingerprint, output), the first row winning (as :data:`INDEX_SCHEMA`).

    ``output`` says which of a request's outputs a row holds: ``1`` for variant
    ``scene#1``, empty for a variant without ``#``."""
    table = records if isinstance(records, pa.Table) else frame_to_table(records)
    usable = pc.and_(
        pc.is_in(table["status"], pa.array([OK, REUSED])), pc.is_valid(table[FINGERPRINT])
    )
    table = table.filter(usable)
    if not len(table):
        return INDEX_SCHEMA.empty_table()
    variant = table["variant"]
    output = pc.if_else(
        pc.match_substring(variant, "#"), pc.replace_substring_regex(variant, "^.*#", ""), ""
    )
    keyed = pa.table(
        {
            FINGERPRINT: table[FINGERPRINT],
            "output": output,
            "_row": pa.array(range(len(table)), pa.int64()),
        }
    )
    first = keyed.group_by([FINGERPRINT, "output"], use_threads=False).aggregate([("_row", "min")])
    rows = pc.sort_indices(first["_row_min"])
    take = pc.take(first["_row_min"], rows)
    return pa.table(
        {
            FINGERPRINT: pc.take(table[FINGERPRINT], take),
            "output": pc.take(output, take),
            **{name: pc.take(table[name], take) for name in PRODUCER_COLUMNS},
        }
    ).cast(INDEX_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """Index entries as :data:`INDEX_SCHEMA`; a nullable column added after the file was
    written (``noop_reason``) reads as nulls, which is what its rows held."""
    for field in INDEX_SCHEMA:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def newest(parts: list[pa.Table]) -> pa.Table:
    """The entries of ``parts`` (newest first), keeping per fingerprint only the outputs of
    the newest part that has it, sorted by fingerprint and output."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return INDEX_SCHEMA.empty_table()
    if len(parts) == 1:
        return parts[0].sort_by([(FINGERPRINT, "ascending"), ("output", "ascending")])
    if sum(len(p) for p in parts) <= _FEW:  # a lookup's few rows: cheaper than a join
        seen: dict[str, int] = {}
        for rank, part in enumerate(parts):
            for fingerprint in part[FINGERPRINT].to_pylist():
                seen.setdefault(fingerprint, rank)
        kept_parts = [
            part.filter(
                pa.array([seen[f] == rank for f in part[FINGERPRINT].to_pylist()], pa.bool_())
            )
            for rank, part in enumerate(parts)
        ]
        return pa.concat_tables(kept_parts).sort_by(
            [(FINGERPRINT, "ascending"), ("output", "ascending")]
        )
    ranked = pa.concat_tables(
        p.append_column("_rank", pa.array([i] * len(p), pa.int32())) for i, p in enumerate(parts)
    )
    best = ranked.group_by(FINGERPRINT, use_threads=False).aggregate([("_rank", "min")])
    joined = ranked.join(best, FINGERPRINT, use_threads=False)
    kept = joined.filter(pc.equal(joined["_rank"], joined["_rank_min"]))
    return kept.select(INDEX_SCHEMA.names).sort_by(
        [(FINGERPRINT, "ascending"), ("output", "ascending")]
    )


def row_group_ranges(metadata: pq.FileMetaData) -> list[tuple[str, str]]:
    """Each row group's (lowest, highest) fingerprint (the whole range when unknown)."""
    column = metadata.schema.names.index(FINGERPRINT)
    ranges = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(column).statistics
        if stats is not None and stats.has_min_max:
            ranges.append((str(stats.min), str(stats.max)))
        else:
            ranges.append(("", "\uffff"))
    return ranges
