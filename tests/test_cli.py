"""The `bria-dagster` command: lineage trace/derived in every format, errors, the demo hook."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import types

import pytest

from bria_dagster.cli import main
from bria_dagster.records.tables import records_to_frame
from tests.test_lineage import product_rows, sha, write_store


@pytest.fixture
def base(tmp_path) -> str:
    store = tmp_path / "bria_data"
    write_store(str(store), records_to_frame([*product_rows("sku-a"), *product_rows("sku-b")]))
    return str(store)


def test_trace_table_shows_each_hop_and_the_total(base, capsys):
    output = sha("expand-sku-a-16:9")
    assert main(["lineage", "trace", output, "--base", base]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"lineage of {output} (4 rows)"
    header = lines[1].split()
    assert header[:4] == ["hop", "step", "sku", "image"]
    body = lines[3:7]
    assert [line.split()[1] for line in body] == ["expand", "replace", "remove", "source"]
    assert "fal-ai/bria/expand" in body[0]
    assert "aspect_ratio=16:9" in body[0]
    assert "prompt=on a marble table" in body[1]
    assert output[:12] in body[0] and output not in body[0]
    assert lines[-2] == "source: https://cdn.example/sku-a.jpg"
    assert lines[-1] == f"total cost: {0.04 + 0.023 + 0.018:.4f} USD"
    # Columns line up: every row starts its `step` cell where the heading does.
    column = lines[1].index("step")
    assert [line[column:].split()[0] for line in body] == ["expand", "replace", "remove", "source"]


def test_trace_json_is_a_list_of_objects(base, capsys):
    output = sha("expand-sku-b-1:1")
    assert main(["lineage", "trace", output[:12], "--base", base, "--format", "json"]) == 0
    captured = capsys.readouterr()
    hops = json.loads(captured.out)
    assert [hop["step"] for hop in hops] == ["expand", "replace", "remove", "source"]
    assert hops[0]["image_sha256"] == output
    assert hops[0]["run_id"] == "run-1"
    assert hops[-1]["image_uri"] == "https://cdn.example/sku-b.jpg"
    assert sum(hop["cost_usd"] for hop in hops) == pytest.approx(0.081)
    assert "total cost: 0.0810 USD" in captured.err


def test_trace_csv_has_a_header_and_one_row_per_hop(base, capsys):
    output = sha("scene-sku-a-1")
    assert main(["lineage", "trace", output, "--base", base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["step"] for row in rows] == ["replace", "remove", "source"]
    assert rows[0]["seed"] == "43"
    assert json.loads(rows[0]["parameters"]) == {"num_images": 2, "prompt": "on a marble table"}


def test_trace_by_stored_image_path(base, tmp_path, capsys):
    output = sha("expand-sku-a-1:1")
    stored = tmp_path / "bria_data" / "images" / "sha256" / output[:2] / f"{output}.png"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"png bytes")
    assert main(["lineage", "trace", str(stored), "--base", base, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image_sha256"] == output


def test_derived_lists_every_descendant(base, capsys):
    assert main(["lineage", "derived", "sku-b", "--base", base, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["step"] for row in rows] == ["remove", "replace", "replace", "expand", "expand"]
    assert not any(row["failed"] for row in rows)

    assert main(["lineage", "derived", "sku-b", "--base", base, "--include-failed"]) == 0
    out = capsys.readouterr().out
    assert "(6 rows)" in out.splitlines()[0]
    assert "failed" in out and "canvas too large" in out


def test_derived_by_source_sha_in_csv(base, capsys):
    source = sha("source-sku-a")
    assert main(["lineage", "derived", source, "--base", base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["root_source_sha256"] for row in rows} == {source}
    assert len(rows) == 5


def test_unknown_image_exits_2_with_one_line(base, capsys):
    assert main(["lineage", "trace", "0" * 64, "--base", base]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("bria-dagster: error: no record of")
    assert base in err[0]
    assert "Traceback" not in captured.err

    assert main(["lineage", "derived", "no-such-sku", "--base", base]) == 2
    assert "no-such-sku" in capsys.readouterr().err


def test_empty_store_is_a_user_error(tmp_path, capsys):
    assert main(["lineage", "trace", "a" * 64, "--base", str(tmp_path)]) == 2
    assert "0 record rows" in capsys.readouterr().err


def test_usage_errors_return_2(capsys):
    assert main(["lineage"]) == 2
    assert main(["lineage", "trace", "x", "--format", "xml"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_without_a_demo_module_says_so(monkeypatch, capsys):
    # Simulate an installation without bria_dagster.cli.demo, whether or not it exists today,
    # and whether or not a test before this one imported it (which sets the package's
    # attribute, found by `from . import demo` before sys.modules is consulted).
    monkeypatch.setitem(sys.modules, "bria_dagster.cli.demo", None)
    import bria_dagster.cli

    monkeypatch.delattr(bria_dagster.cli, "demo", raising=False)
    assert main(["demo", "--base", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert "bria_dagster.cli.demo" in err
    assert "Traceback" not in err


def test_demo_delegates_with_the_base(monkeypatch, tmp_path):
    seen = {}

    def fake_main(base: str) -> int:
        seen["base"] = base
        return 0

    fake = types.ModuleType("bria_dagster.cli.demo")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "bria_dagster.cli.demo", fake)
    import bria_dagster.cli

    monkeypatch.setattr(bria_dagster.cli, "demo", fake, raising=False)
    assert main(["demo", "--base", str(tmp_path)]) == 0
    assert seen == {"base": str(tmp_path)}


def test_python_dash_m_runs_the_cli(base):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bria_dagster.cli",
            "lineage",
            "derived",
            "sku-a",
            "--base",
            base,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "images derived from sku-a (5 rows)" in done.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "bria_dagster.cli",
            "lineage",
            "trace",
            "f" * 64,
            "--base",
            base,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


def test_unreadable_table_exits_2_naming_the_file(base, capsys):
    broken = f"{base}/tables/product_cutouts/broken.parquet"
    with open(broken, "wb") as fh:
        fh.write(b"PAR1 truncated")
    assert main(["lineage", "derived", "sku-a", "--base", base]) == 2
    err = capsys.readouterr().err
    assert "broken.parquet" in err
    assert len(err.strip().splitlines()) == 1


def test_an_index_failing_mid_query_falls_back_to_the_tables(base, monkeypatch, capsys):
    from bria_dagster.lineage import index as lineage_index

    output = sha("expand-sku-a-16:9")
    assert main(["lineage", "trace", output, "--base", base, "--no-index"]) == 0
    expected = capsys.readouterr().out

    real = lineage_index.LineageIndex.trace
    calls = []

    def broken_once(self, *args, **kwargs):  # the cached index fails, the tables answer
        calls.append(self)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(lineage_index.LineageIndex, "trace", broken_once)
    assert main(["lineage", "trace", output, "--base", base]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected  # the same answer, printed once, no traceback
    assert "lineage index failed during the query (disk I/O error)" in captured.err
    assert "reading the tables instead" in captured.err
    assert "Traceback" not in captured.err
