"""The ImageRecord schema round-trips, empty or full, and rejects wrong shapes."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bria_dagster.records.schema import OK, REUSED, canonical_json, make_record_id, reused_record
from bria_dagster.records.tables import (
    IMAGE_RECORD_SCHEMA,
    frame_rows,
    frame_to_table,
    records_to_frame,
)


def _row(sku: str, **over) -> dict:
    row = {name: None for name in IMAGE_RECORD_SCHEMA.names}
    row.update(
        record_id=make_record_id("b1", "remove", sku, "", "fp"),
        partition="b1",
        sku=sku,
        step="remove",
        variant="",
        status=OK,
        root_source_uri=f"https://cdn.example/{sku}.jpg",
        parameters=canonical_json({"sync_mode": False}),
        cost_usd=0.018,
        duration_s=1.5,
        attempts=1,
        run_id="run-1",
        asset_key="product_cutouts",
        code_version="1",
        created_at=datetime(2026, 11, 24, tzinfo=UTC),
        catalog_row=canonical_json({"sku": sku}),
        width=640,
        height=480,
        seed=None,
    )
    row.update(over)
    return row


def test_empty_frame_has_every_column():
    frame = records_to_frame([])
    assert list(frame.columns) == IMAGE_RECORD_SCHEMA.names
    assert frame_to_table(frame).schema.equals(IMAGE_RECORD_SCHEMA)


def test_rows_round_trip():
    table = frame_to_table(records_to_frame([_row("a"), _row("b", seed=7)]))
    assert table.num_rows == 2
    assert table.schema.field("width").type == pa.int32()
    assert table.column("seed").to_pylist() == [None, 7]


def test_a_required_column_without_a_value_is_refused():
    with pytest.raises(ValueError, match=r"column 'run_id' is required but 1 row"):
        records_to_frame([_row("a"), _row("b", run_id=None)])


def test_frame_rows_gives_plain_python_values():
    rows = frame_rows(records_to_frame([_row("a", seed=7), _row("b")]))
    assert [r["sku"] for r in rows] == ["a", "b"]
    assert rows[0]["seed"] == 7 and type(rows[0]["seed"]) is int
    assert rows[1]["seed"] is None
    assert rows[0]["created_at"] == datetime(2026, 11, 24, tzinfo=UTC)
    # and back: the rows rebuild the same table
    again = frame_to_table(records_to_frame(rows))
    assert again.equals(frame_to_table(records_to_frame([_row("a", seed=7), _row("b")])))


def test_wrong_shape_is_named():
    frame = records_to_frame([_row("a")]).drop(columns=["sku"]).assign(bogus=1)
    with pytest.raises(ValueError, match=r"missing columns \['sku'\].*\['bogus'\]"):
        frame_to_table(frame)


def test_canonical_json_and_record_ids_are_stable():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert make_record_id("p", "s", "k", "", "f") == make_record_id("p", "s", "k", "", "f")
    assert make_record_id("p", "s", "k", "0", "f") != make_record_id("p", "s", "k", "1", "f")


def test_reused_record_keeps_the_producer_and_names_the_reusing_run():
    made = _row("a", request_id="req-1", unit_price_usd=0.018)
    row = reused_record(made, "run-2", partition="b2", record_id="r2")
    assert row["status"] == REUSED and row["run_id"] == "run-1"
    assert row["reused_in_run_id"] == "run-2" and row["partition"] == "b2"
    assert row["request_id"] == "req-1" and row["unit_price_usd"] == 0.018
    assert row["cost_usd"] == 0.0  # the reusing run paid nothing
    assert made["status"] == OK and made["reused_in_run_id"] is None  # not modified
    # Reusing a reused row keeps the first producer.
    again = reused_record(row, "run-3")
    assert again["run_id"] == "run-1" and again["reused_in_run_id"] == "run-3"
    with pytest.raises(ValueError, match="run_id"):
        reused_record(made, "run-2", run_id="run-2")


def test_a_table_written_before_the_new_columns_still_reads(tmp_path):
    from bria_dagster.lineage.frame import load_records, trace
    from bria_dagster.lineage.index import open_index
    from bria_dagster.records.tables import read_records, read_table

    new = {"reused_in_run_id", "unit_price_usd"}
    old_schema = pa.schema([f for f in IMAGE_RECORD_SCHEMA if f.name not in new])
    rows = [_row("a", image_sha256="ab" * 32, parent_sha256="cd" * 32)]
    old = pa.Table.from_pylist(rows, schema=old_schema)
    path = tmp_path / "tables" / "product_cutouts" / "b1.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)

    table = read_records(str(path))
    assert table.schema.equals(IMAGE_RECORD_SCHEMA)
    assert table.column("reused_in_run_id").to_pylist() == [None]
    assert table.column("unit_price_usd").to_pylist() == [None]
    assert list(read_table(str(path)).columns) == IMAGE_RECORD_SCHEMA.names
    assert load_records(tmp_path)["unit_price_usd"].isna().all()
    chain = trace("ab" * 32, tmp_path)
    assert chain["run_id"].iloc[0] == "run-1" and pd.isna(chain["reused_in_run_id"].iloc[0])
    with open_index(tmp_path) as index:
        hop = index.trace("ab" * 32).rows[0]
    assert hop["run_id"] == "run-1" and hop["reused_in_run_id"] is None
