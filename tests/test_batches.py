"""Batches by hand: `bria-dagster batches add|list`, then a launch with --partition."""

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from bria_dagster.cli import main
from tests.test_component import write_batch
from tests.test_dg_project import dg_project

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
    defs = str(tmp_path / "defs.py")
    where = "pipeline product_images (partitions product_images_batches)"

    # The pipeline and its catalog folder are read from the definitions file.
    assert main(["batches", "add", "-f", defs]) == 0
    assert capsys.readouterr().out == f"added week1 to {where}\nadded week2 to {where}\n"
    assert main(["batches", "add", "week1", "--catalog-dir", str(catalogs), "-f", defs]) == 0
    assert capsys.readouterr().out == f"already there: week1 in {where}\n"
    assert main(["batches", "list", "-f", defs]) == 0
    assert capsys.readouterr().out == "week1\nweek2\n"
    assert main(["batches", "list", "--pipeline", "other"]) == 0
    assert capsys.readouterr().out == ""  # batches belong to one pipeline

    # Named without a code location: nothing is loaded, the files are checked in --catalog-dir.
    args = ["batches", "add", "week9", "--pipeline", "product_images"]
    assert main([*args, "--catalog-dir", str(catalogs)]) == 2
    error = capsys.readouterr().err
    assert "no catalog file for batch(es) week9" in error and "add the file first" in error

    monkeypatch.delenv("FAL_KEY", raising=False)
    dagster = str(Path(sys.executable).parent / "dagster")
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
    args = ["batches", "add", "--pipeline", "product_images"]
    assert main([*args, "--catalog-dir", str(tmp_path / "nope")]) == 2
    assert f"catalog_dir {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


# -- which pipeline: read from the code location ---------------------------------------


def _partitions(name: str) -> list[str]:
    """The batches the Dagster instance at $DAGSTER_HOME holds for partitions ``name``."""
    with dg.DagsterInstance.get() as instance:
        return list(instance.get_dynamic_partitions(name))


@pytest.fixture
def spring_project(tmp_path, home, monkeypatch) -> Path:
    """A dg project (as `dg scaffold` writes it, src layout, not installed) whose one
    component is `spring_catalog`, with a `home_goods` batch in its catalog folder; the
    current folder is its root."""
    package = f"shop_{uuid.uuid4().hex[:8]}"  # a fresh module name: this process imports it
    defs = dg_project(tmp_path, package)
    (defs / "spring_catalog").mkdir()
    (defs / "spring_catalog" / "defs.yaml").write_text(
        "type: bria_dagster.ProductImagesComponent\n"
        "attributes:\n"
        "  name: spring_catalog\n"
        "  catalog_dir: catalogs/spring_catalog\n"
        "  steps: [remove]\n"
    )
    write_batch(tmp_path / "catalogs" / "spring_catalog", "home_goods", ["HG-1"])
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        del sys.modules[module]


def test_in_a_dg_project_a_batch_goes_to_its_one_pipeline_and_says_so(
    spring_project, capsys, monkeypatch
):
    assert main(["batches", "add", "home_goods"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        "added home_goods to pipeline spring_catalog (partitions spring_catalog_batches)\n"
    )
    assert _partitions("spring_catalog_batches") == ["home_goods"]
    assert _partitions("product_images_batches") == []  # not the default name any more

    # From a folder inside the project, as dg finds it; without names, every new file.
    write_batch(spring_project / "catalogs" / "spring_catalog", "garden", ["GA-1"])
    monkeypatch.chdir(spring_project / "src")
    assert main(["batches", "add"]) == 0
    assert capsys.readouterr().out == (
        "added garden to pipeline spring_catalog (partitions spring_catalog_batches)\n"
        "already there: home_goods in pipeline spring_catalog (partitions spring_catalog_batches)\n"
    )
    assert main(["batches", "add", "home_goods"]) == 0
    assert capsys.readouterr().out == (
        "already there: home_goods in pipeline spring_catalog (partitions spring_catalog_batches)\n"
    )
    assert main(["batches", "list"]) == 0
    assert capsys.readouterr().out == "home_goods\ngarden\n"


def test_a_bad_catalog_is_refused_before_anything_is_added(spring_project, capsys):
    folder = spring_project / "catalogs" / "spring_catalog"
    (folder / "no_urls.csv").write_text("sku,name\nA-1,mug\n")

    assert main(["batches", "add", "no_urls"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "batch no_urls not added to pipeline spring_catalog" in error
    assert f"catalog {folder / 'no_urls.csv'}: required column(s) image_url missing" in error
    assert "(found: sku, name)" in error and "fix the file" in error

    assert main(["batches", "add", "kitchen"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"no catalog file for batch(es) kitchen in {folder}" in error

    # Every file of the folder, one bad among good ones: none is added.
    assert main(["batches", "add"]) == 2
    assert "batch no_urls not added" in capsys.readouterr().err
    assert _partitions("spring_catalog_batches") == []


def test_a_catalog_dir_other_than_the_pipelines_is_refused(spring_project, capsys, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_batch(elsewhere, "home_goods", ["HG-1"])
    assert main(["batches", "add", "home_goods", "--catalog-dir", str(elsewhere)]) == 2
    error = capsys.readouterr().err
    assert f"--catalog-dir {elsewhere} is not the catalog_dir of pipeline spring_catalog" in error
    assert _partitions("spring_catalog_batches") == []
    # Its own folder, however it is written, is accepted.
    assert main(["batches", "add", "--catalog-dir", "catalogs/spring_catalog/"]) == 0
    assert _partitions("spring_catalog_batches") == ["home_goods"]


def _two_pipelines(tmp_path: Path) -> Path:
    for name in ("spring", "outlet"):
        write_batch(tmp_path / "catalogs" / name, "home_goods", ["HG-1"])
    file = tmp_path / "definitions.py"
    file.write_text(
        textwrap.dedent(
            """
            import dagster as dg
            from bria_dagster import PipelineSettings, build_definitions

            defs = dg.Definitions.merge(
                *(
                    build_definitions(
                        PipelineSettings(catalog_dir=f"catalogs/{name}", steps=("remove",)),
                        name=name,
                        storage=f"bria_data/{name}",
                    )
                    for name in ("spring", "outlet")
                )
            )
            """
        )
    )
    return file


def test_two_pipelines_and_no_pipeline_named_is_refused_listing_both(
    tmp_path, home, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    _two_pipelines(tmp_path)
    assert main(["batches", "add", "home_goods", "-f", "definitions.py"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "bria-dagster: error: the code location -f definitions.py has 2 pipelines "
        "(outlet, spring): choose one with --pipeline NAME\n"
    )
    assert _partitions("spring_batches") == _partitions("outlet_batches") == []

    assert (
        main(["batches", "add", "home_goods", "-f", "definitions.py", "--pipeline", "outlet"]) == 0
    )
    assert capsys.readouterr().out == (
        "added home_goods to pipeline outlet (partitions outlet_batches)\n"
    )
    assert _partitions("outlet_batches") == ["home_goods"] and _partitions("spring_batches") == []

    assert main(["batches", "list", "-f", "definitions.py", "--pipeline", "autumn"]) == 2
    assert (
        "no pipeline 'autumn' in the code location -f definitions.py; its pipelines: "
        "outlet, spring\n"
    ) in capsys.readouterr().err


def test_without_pipeline_or_code_location_nothing_is_guessed(tmp_path, home, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_batch(tmp_path / "catalogs", "home_goods", ["HG-1"])
    assert main(["batches", "add", "home_goods"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "no code location found in" in error and "--pipeline NAME" in error

    # Named, nothing is loaded; unchecked (no folder known) it says so on stderr.
    assert main(["batches", "add", "home_goods", "--pipeline", "spring"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "added home_goods to pipeline spring (partitions spring_batches)\n"
    assert "note: catalog files not checked" in captured.err
    assert _partitions("spring_batches") == ["home_goods"]


def test_a_code_location_that_does_not_load_is_one_line(tmp_path, home, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("import dagster as dg\n\nraise RuntimeError('no\\ndefs')\n")
    assert main(["batches", "add", "x", "-f", "broken.py"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "the code location -f broken.py does not load (RuntimeError: no defs)" in error
    assert main(["batches", "add", "x", "-f", "missing.py"]) == 2
    assert "-f missing.py: no such file" in capsys.readouterr().err
