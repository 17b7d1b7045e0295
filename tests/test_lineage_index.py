"""The lineage index: one answer for a store and a frame, incremental sync, CLI output."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from bria_dagster.cli import main
from bria_dagster.cli.lineage import write_csv
from bria_dagster.errors import IndexUnavailableError, LineageNotFoundError, RecordTableError
from bria_dagster.lineage import frame as lineage
from bria_dagster.lineage import sync as lineage_sync
from bria_dagster.lineage.database import index_path
from bria_dagster.lineage.index import LineageIndex, open_index, sync
from bria_dagster.records.schema import FAILED
from bria_dagster.records.tables import read_all, records_to_frame, table_files
from tests.test_lineage import product_rows, record, reused_cutout, sha, write_store


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    reused = reused_cutout()
    # Sub-second times and a recorded catalog source exercise time formatting and chain ends.
    catalog = record("source", "sku-c", sha("source-sku-c"), None, variant="source")
    odd = record("remove", "sku-c", sha("cutout-sku-c"), sha("source-sku-c"), minutes=3)
    odd["created_at"] += timedelta(microseconds=123456)
    custom = record("replace", "sku-a", sha("custom"), sha("cutout-sku-a"), variant="9")
    custom["image_uri"] = "s3://shop-media/exports/sku-a-hero.png"
    return [*product_rows("sku-a"), *product_rows("sku-b"), reused, catalog, odd, custom]


@pytest.fixture
def base(tmp_path, rows) -> str:
    store = tmp_path / "bria_data"
    write_store(str(store), records_to_frame(rows))
    return str(store)


def queries(stored: str) -> list[tuple[str, str, dict[str, bool]]]:
    """(query, name, options) covering every way of naming an image or a source."""
    return [
        ("trace", sha("expand-sku-a-16:9"), {}),
        ("trace", sha("expand-sku-a-1:1"), {"all_records": True}),
        ("trace", sha("expand-sku-b-1:1")[:10].upper(), {}),
        ("trace", sha("source-sku-b"), {}),
        ("trace", sha("cutout-sku-c"), {}),
        ("trace", sha("source-sku-c"), {}),
        ("trace", "s3://shop-media/exports/sku-a-hero.png", {}),
        ("trace", "https://cdn.example/sku-b.jpg", {}),
        ("trace", stored, {}),
        ("derived", "sku-a", {}),
        ("derived", "sku-b", {"include_failed": True}),
        ("derived", "sku-c", {}),
        ("derived", sha("source-sku-a"), {}),
        ("derived", sha("source-sku-c")[:12], {}),
        ("derived", "https://cdn.example/sku-b.jpg", {"include_failed": True}),
        ("derived", sha("cutout-sku-b"), {"include_failed": True}),
        ("derived", sha("scene-sku-a-0"), {}),
        ("derived", stored, {}),
    ]


@pytest.fixture
def stored(tmp_path) -> str:
    output = sha("expand-sku-b-16:9")
    path = tmp_path / "elsewhere" / f"{output}.png"
    path.parent.mkdir()
    path.write_bytes(b"png bytes")
    return str(path)


def test_a_store_and_its_rows_in_memory_give_the_same_answers(base, stored):
    with open_index(base) as on_disk, LineageIndex.of_records(read_all(base)) as in_memory:
        for query, name, options in queries(stored):
            got = getattr(on_disk, query)(name, **options)
            assert got == getattr(in_memory, query)(name, **options), (query, name)
            assert all(list(row) == list(got.columns) for row in got.rows)


def test_frames_hold_the_index_rows(base, stored):
    with open_index(base) as index:
        for query, name, options in queries(stored):
            result = getattr(index, query)(name, **options)
            frame = lineage.to_frame(result)
            assert list(frame.columns) == list(result.columns)
            shas = [r["image_sha256"] or "" for r in result.rows]
            assert frame["image_sha256"].fillna("").tolist() == shas
            assert frame.attrs["total_cost_usd"] == pytest.approx(result.total_cost_usd)
            # The CLI's CSV writer, byte for byte as pandas writes the same rows.
            written = io.StringIO()
            write_csv(result, written)
            assert written.getvalue() == frame.to_csv(index=False), (query, name)


def test_errors_are_the_same_for_a_store_and_a_frame(base, tmp_path, rows):
    missing = str(tmp_path / "missing.png")
    cases = [
        ("trace", "0" * 64),
        ("trace", "abc"),
        ("trace", missing),
        ("derived", "sku-zzz"),
        ("derived", "abcd"),
    ]
    frame = records_to_frame(rows)
    for query, name in cases:
        with pytest.raises(LineageNotFoundError) as from_store:
            getattr(lineage, query)(name, base)
        with pytest.raises(LineageNotFoundError) as from_frame:
            getattr(lineage, query)(name, frame)
        message = str(from_frame.value).replace("the given records", f"{base}/tables")
        assert str(from_store.value) == message


def test_ambiguous_prefix_asks_for_more(tmp_path, rows):
    clash = records_to_frame(rows)
    clash.loc[clash["image_sha256"] == sha("scene-sku-a-0"), "image_sha256"] = "abcdef01" + "1" * 56
    clash.loc[clash["image_sha256"] == sha("scene-sku-b-0"), "image_sha256"] = "abcdef01" + "2" * 56
    write_store(str(tmp_path), clash)
    with open_index(tmp_path) as index, pytest.raises(LineageNotFoundError) as got:
        index.trace("abcdef01")
    with pytest.raises(LineageNotFoundError) as expected:
        lineage.trace("abcdef01", tmp_path)
    assert "ambiguous" in str(got.value)
    assert str(got.value) == str(expected.value)
    with open_index(tmp_path) as index:  # one more character settles it
        assert index.trace("abcdef011").rows[0]["image_sha256"] == "abcdef01" + "1" * 56


def test_empty_store_has_no_rows_and_no_index_file(tmp_path):
    with open_index(tmp_path / "nothing") as index, pytest.raises(LineageNotFoundError) as err:
        index.trace("a" * 64)
    assert "0 record rows" in str(err.value)
    assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------- sync


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The tables the index reads (re-read) from Parquet."""
    seen: list[str] = []
    real = lineage_sync.read_columns

    def counting(path: str) -> Any:
        seen.append(os.path.relpath(path, os.path.dirname(os.path.dirname(path))))
        return real(path)

    monkeypatch.setattr(lineage_sync, "read_columns", counting)
    return seen


def count(base: str) -> int:
    with sqlite3.connect(index_path(base)) as conn:
        return conn.execute("SELECT count(*) FROM records").fetchone()[0]


def test_sync_reads_only_new_and_changed_tables(base, rows, reads):
    first = sync(base)
    assert sorted(reads) == sorted(
        os.path.relpath(p, os.path.join(base, "tables")) for p in table_files(base)
    )
    assert first.rows_written == first.records == len(rows) == count(base)
    assert os.path.isfile(index_path(base))

    reads.clear()
    again = sync(base)
    assert reads == [] and not again.changed
    assert again.records == len(rows)

    # Replace one table: only it is re-read, and its old rows are gone.
    scenes = records_to_frame([r for r in rows if r["step"] == "replace"])
    scenes = scenes[scenes["sku"] == "sku-a"].assign(run_id="run-9")
    write_store(base, scenes)
    changed = sync(base)
    assert reads == ["product_scenes/batch-1.parquet"]
    assert changed.read == reads and changed.removed == []
    n_scenes_b = sum(1 for r in rows if r["step"] == "replace" and r["sku"] == "sku-b")
    assert count(base) == len(rows) - n_scenes_b
    with open_index(base) as index:
        assert index.trace(sha("scene-sku-a-0")).rows[0]["run_id"] == "run-9"
        assert index.derived("sku-b").rows == lineage.derived_images("sku-b", base)

    # Remove a table: its rows leave the index without reading anything.
    reads.clear()
    os.remove(os.path.join(base, "tables", "product_expansions", "batch-1.parquet"))
    removed = sync(base)
    assert reads == [] and removed.removed == ["product_expansions/batch-1.parquet"]
    with open_index(base) as index, pytest.raises(LineageNotFoundError):
        index.trace(sha("expand-sku-a-1:1"))
    assert count(base) == len(lineage.load_records(base))


def test_a_failed_sync_leaves_the_index_as_it_was(base, rows):
    sync(base)
    broken = os.path.join(base, "tables", "product_scenes", "broken.parquet")
    with open(broken, "wb") as fh:
        fh.write(b"not parquet at all")
    os.remove(os.path.join(base, "tables", "product_expansions", "batch-1.parquet"))
    with pytest.raises(RecordTableError, match=r"broken\.parquet"):
        sync(base)
    assert count(base) == len(rows)  # the removal was rolled back with the failed read
    os.remove(broken)
    assert sync(base).removed == ["product_expansions/batch-1.parquet"]


def test_concurrent_syncs_build_one_consistent_index(base, rows):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: sync(base), range(4)))
    assert [r.records for r in results] == [len(rows)] * 4
    assert sum(r.rows_written for r in results) == len(rows)  # built once, not four times
    assert count(base) == len(rows)


def test_an_unusable_index_file_is_reported(base):
    with open(index_path(base), "wb") as fh:
        fh.write(b"this is not a database" * 100)
    with pytest.raises(IndexUnavailableError, match="--no-index"):
        sync(base)


# ----------------------------------------------------------------------------- CLI


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_output_is_the_same_with_and_without_the_index(base, stored, capsys):
    for query, name, options in queries(stored):
        flags = [f"--{k.replace('_', '-')}" for k, on in options.items() if on]
        for fmt in ("table", "json", "csv"):
            argv = ["lineage", query, name, "--base", base, "--format", fmt, *flags]
            with_index = run(argv, capsys)
            without = run([*argv, "--no-index"], capsys)
            assert with_index[0] == without[0] == 0, (argv, with_index[2])
            assert with_index[1] == without[1], argv
            assert with_index[1].strip()


def test_cli_errors_are_the_same_with_and_without_the_index(base, capsys):
    for argv in (
        ["lineage", "trace", "f" * 64, "--base", base],
        ["lineage", "derived", "no-such-sku", "--base", base],
        ["lineage", "trace", "abc", "--base", base],
    ):
        with_index = run(argv, capsys)
        without = run([*argv, "--no-index"], capsys)
        assert with_index == without == (2, "", with_index[2])
        assert len(with_index[2].strip().splitlines()) == 1


def test_cli_notes_indexing_on_stderr_only_when_tables_were_read(base, capsys):
    status, out, err = run(["lineage", "derived", "sku-a", "--base", base], capsys)
    assert status == 0 and "indexed" not in out
    assert err.startswith(f"indexed {len(table_files(base))} table(s)")
    assert len(err.splitlines()) == 1
    status, _, err = run(["lineage", "derived", "sku-a", "--base", base], capsys)
    assert status == 0 and err == ""


def test_cli_with_a_current_index_does_not_import_pandas(base):
    # Nor pydantic: a trace needs no step declarations (their contracts are pydantic models).

    sync(base)
    code = (
        "import sys; from bria_dagster.cli import main; "
        f"status = main(['lineage', 'trace', {sha('expand-sku-a-1:1')!r}, '--base', {base!r}, "
        "'--format', 'csv']); "
        "heavy = sorted(m for m in ('pandas', 'pyarrow', 'numpy', 'pydantic') "
        "if m in sys.modules); "
        "print('loaded:', heavy); sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"
    assert "expand" in done.stdout


def test_cli_indexes_a_memory_url_in_memory_only(rows, capsys, tmp_path):
    url = "memory://lineage-index-test"
    write_store(url, records_to_frame(rows))
    try:
        args = ["lineage", "derived", "sku-a", "--base", url, "--cache-dir", str(tmp_path)]
        status, out, _ = run(args, capsys)
        assert status == 0 and "images derived from sku-a" in out
        assert not os.path.exists(index_path(url, tmp_path)) and not os.listdir(tmp_path)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/lineage-index-test", recursive=True)


def test_pandas_frame_and_index_agree_on_row_counts(base, rows):
    with open_index(base) as index:
        assert len(index) == len(rows) == len(lineage.load_records(base))


def test_unsearched_columns_round_trip_through_the_index(tmp_path, rows):
    """Values the index packs into one text per row come back exactly: nulls, floats,
    and a value holding the packing's separator (that row is stored as JSON)."""
    odd = record("expand", "sku-odd", None, sha("scene-sku-a-0"), variant="0-1:1", status=FAILED)
    odd.update(error_message='bad\x1fcanvas \\ "x"', seed=2**40, cost_usd=0.1 + 0.2)
    odd["unit_price_usd"] = -0.0
    write_store(str(tmp_path), records_to_frame([*rows, odd]))
    with open_index(tmp_path) as index:
        got = index.derived("sku-odd", include_failed=True).rows
    assert len(got) == 1
    for name in ("error_message", "seed", "cost_usd", "unit_price_usd", "variant", "run_id"):
        assert got[0][name] == odd[name], name
    assert str(got[0]["unit_price_usd"]) == "-0.0" and got[0]["request_id"] is None


def test_an_index_of_an_older_layout_is_rebuilt_in_one_piece(base, rows):
    path = index_path(base)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, created_us INTEGER)")
        conn.execute("PRAGMA user_version = 4")
    stats = sync(base)
    assert stats.rows_written == stats.records == len(rows) == count(base)
    leftovers = [n for n in os.listdir(os.path.dirname(path)) if ".build-" in n]
    assert leftovers == []
