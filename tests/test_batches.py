"""Batches by hand: `bria-dagster batches add|list`, then a launch with --partition."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bria_dagster.cli import main
from tests.test_component import write_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_add_and_list_batches_then_materialize_one_from_the_command_line(
    tmp_path, home, capsys, monkeypatch
):
    catalogs = tmp_path / "catalogs"
    write_batch(catalogs, "week1", ["W1-A", "W1-B"])
    write_batch(catalogs, "week2", ["W2-A"])

    assert main(["batches", "add", "--catalog-dir", str(catalogs)]) == 0
    assert capsys.readouterr().out == "added week1\nadded week2\n"
    assert main(["batches", "add", "week1", "--catalog-dir", str(catalogs)]) == 0
    assert capsys.readouterr().out == "already there: week1\n"
    assert main(["batches", "list"]) == 0
    assert capsys.readouterr().out == "week1\nweek2\n"
    assert main(["batches", "list", "--pipeline", "other"]) == 0
    assert capsys.readouterr().out == ""  # batches belong to one pipeline

    assert main(["batches", "add", "week9", "--catalog-dir", str(catalogs)]) == 2
    error = capsys.readouterr().err
    assert "no catalog file for batch(es) week9" in error and "add the file first" in error

    (tmp_path / "defs.py").write_text(
        textwrap.dedent(
            f"""
            from bria_dagster import BriaResource, PipelineSettings, build_definitions

            defs = build_definitions(
                PipelineSettings(catalog_dir={str(catalogs)!r}, steps=("remove",)),
                storage={str(tmp_path / "data")!r},
                bria=BriaResource(backend="local", file_roots=[{str(tmp_path)!r}]),
            )
            """
        )
    )
    monkeypatch.delenv("FAL_KEY", raising=False)
    dagster = str(Path(sys.executable).parent / "dagster")
    defs = str(tmp_path / "defs.py")
    out = subprocess.run(
        [dagster, "asset", "materialize", "-f", defs, "--select", "*", "--partition", "week1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = tmp_path / "data" / "tables" / "product_images__product_cutouts" / "week1.parquet"
    assert table.exists()


def test_without_dagster_home_the_error_says_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["batches", "list"]) == 2
    assert "export DAGSTER_HOME=" in capsys.readouterr().err


def test_a_missing_catalog_dir_is_named(tmp_path, home, capsys):
    assert main(["batches", "add", "--catalog-dir", str(tmp_path / "nope")]) == 2
    assert f"catalog_dir {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
