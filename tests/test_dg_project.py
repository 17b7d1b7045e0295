"""ProductImagesComponent through the real ``dg`` CLI (dagster-dg-cli, the ``dev`` extra).

A minimal dg project is written under ``tmp_path`` (``[tool.dg]`` in pyproject.toml, a
root module with ``definitions.py`` and a ``defs`` folder; no install needed), and
``dg`` runs against this interpreter's environment. Each ``dg`` call takes seconds, so
the checks are batched: ``dg check defs`` runs the schema check of every defs.yaml
before it loads the definitions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bria_dagster
from bria_dagster.steps.registry import step_names
from tests.test_component import write_batch

DG = Path(sys.executable).with_name("dg")
PACKAGE_ROOT = Path(bria_dagster.__file__).resolve().parent.parent
TYPE = "bria_dagster.ProductImagesComponent"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _dg_is_installed() -> None:
    # The dev extra installs dagster-dg-cli: without it these checks fail, never skip.
    assert DG.exists(), f"{DG} is missing: install the dev extra (pip install -e '.[dev]')"


def dg_project(root: Path, name: str = "shop") -> Path:
    """A minimal dg project at ``root``; returns its defs folder."""
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [project]
            name = "{name}"
            version = "0.1.0"
            requires-python = ">=3.11"
            dependencies = ["bria-dagster"]

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "{name}"

            [tool.dg.cli]
            telemetry = {{ enabled = false }}
            """
        )
    )
    package = root / "src" / name
    (package / "defs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs() -> dg.Definitions:
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        )
    )
    return package / "defs"


def dg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dg <args>`` in the project at ``root``, with this environment as its Python."""
    env = {
        **os.environ,
        "VIRTUAL_ENV": sys.prefix,
        "PATH": f"{DG.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(root / ".dagster_home"),
        # The project as if installed (`pip install -e .` in a real one): its src on the path;
        # then the bria_dagster this test imports (a checkout's, not another editable one's).
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(PACKAGE_ROOT)]),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.pop("FAL_KEY", None)
    (root / ".dagster_home").mkdir(exist_ok=True)
    return subprocess.run(
        [str(DG), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def bria_dagster_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``bria-dagster <args>`` in the project at ``root`` (same DAGSTER_HOME as ``dg``)."""
    env = {**os.environ, "DAGSTER_HOME": str(root / ".dagster_home")}
    (root / ".dagster_home").mkdir(exist_ok=True)
    return subprocess.run(
        [str(DG.with_name("bria-dagster")), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dg_scaffold_writes_a_defs_yaml_that_passes_dg_check_yaml_and_defs_beside_another(
    tmp_path,
):
    defs = dg_project(tmp_path)
    scaffold = dg(tmp_path, "scaffold", "defs", TYPE, "spring")
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    written = (defs / "spring" / "defs.yaml").read_text()
    assert "name: spring" in written and "catalog_dir: catalogs/spring" in written
    assert (tmp_path / "catalogs" / "spring").is_dir()

    # As written, alone (dg check yaml validates one instance per component type).
    check = dg(tmp_path, "check", "yaml")
    assert check.returncode == 0, check.stdout + check.stderr

    # A second instance, with checks and a translation: both load side by side. (Not a
    # different `resource`: the code location has one `bria` resource; see
    # test_dg_check_defs_names_two_components_with_different_resources.)
    (tmp_path / "landing").mkdir()
    (defs / "autumn").mkdir()
    (defs / "autumn" / "defs.yaml").write_text(
        textwrap.dedent(
            f"""
            type: {TYPE}
            attributes:
              name: autumn
              catalog_dir: landing
              steps: [remove]
              checks: {{max_failure_rate: 0.2, failure_severity: ERROR, fail_run_above: 0.8}}
              translation:
                group_name: catalog
                owners: ["team:catalog"]
                key: "shop/{{{{ pipeline }}}}/{{{{ asset_name }}}}"
            """
        )
    )
    check = dg(tmp_path, "check", "defs")
    output = check.stdout + check.stderr
    assert check.returncode == 0, output
    assert "All component YAML validated successfully" in output
    assert "All definitions loaded successfully" in output

    # A batch added by hand, then launched with dg: the partition exists, the run succeeds.
    write_batch(tmp_path / "catalogs" / "spring", "drop1", ["MUG-1"])
    unnamed = bria_dagster_cli(tmp_path, "batches", "add", "drop1")
    assert unnamed.returncode == 2 and unnamed.stdout == "", unnamed.stdout + unnamed.stderr
    assert unnamed.stderr.endswith(
        "has 2 pipelines (autumn, spring): choose one with --pipeline NAME\n"
    ), unnamed.stderr
    add = bria_dagster_cli(
        tmp_path, "batches", "add", "--pipeline", "spring", "--catalog-dir", "catalogs/spring"
    )
    added = "added drop1 to pipeline spring (partitions spring_batches)\n"
    assert add.returncode == 0 and add.stdout == added, add.stdout + add.stderr
    launch = dg(tmp_path, "launch", "--job", "spring", "--partition", "drop1")
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    cutouts = tmp_path / "bria_data" / "tables" / "spring__product_cutouts" / "drop1.parquet"
    assert cutouts.exists()

    # A batch whose only image is missing: `dg launch` fails (exit status 1) and prints
    # why, after the step tables recorded it.
    (tmp_path / "catalogs" / "spring" / "drop2.csv").write_text("sku,image_url\nHG-101,gone.jpg\n")
    add = bria_dagster_cli(
        tmp_path,
        "batches",
        "add",
        "drop2",
        "--pipeline",
        "spring",
        "--catalog-dir",
        "catalogs/spring",
    )
    assert add.returncode == 0, add.stdout + add.stderr
    launch = dg(tmp_path, "launch", "--job", "spring", "--partition", "drop2")
    output = launch.stdout + launch.stderr
    assert launch.returncode == 1, output[-3000:]
    assert "1 of 1 products of batch 'drop2' failed (100%)" in output, output[-3000:]
    assert "- HG-101: FetchFailedError at spring/catalog_batch:" in output, output[-3000:]
    assert (cutouts.parent / "drop2.parquet").exists()


def test_dg_check_yaml_names_each_unknown_key(tmp_path):
    defs = dg_project(tmp_path)
    (defs / "typo").mkdir()
    (defs / "typo" / "defs.yaml").write_text(
        textwrap.dedent(
            f"""
            type: {TYPE}
            attributes:
              resource:
                max_concurency: 32
                prices: {{remove_usd_per_cal: 0.01}}
              checks: {{max_failure_rat: 0.2}}
              translation: {{gruop_name: catalog}}
            """
        )
    )
    check = dg(tmp_path, "check", "yaml")
    output = check.stdout + check.stderr
    assert check.returncode == 1, output
    for path, key in (
        ("attributes.resource", "max_concurency"),
        ("attributes.resource.prices", "remove_usd_per_cal"),
        ("attributes.checks", "max_failure_rat"),
        ("attributes.translation", "gruop_name"),
    ):
        assert f"{path}.{key} Additional properties are not allowed ('{key}' was unexpected)" in (
            output
        ), output


def test_dg_checks_custom_packshot_presets_as_yaml_writes_them(tmp_path):
    """A custom preset in YAML takes its name from its key, its fill bounds from its fill
    and the rest from ``extends``: ``dg check yaml`` accepts that, and names a typo."""
    defs = dg_project(tmp_path)
    (tmp_path / "catalogs").mkdir()
    (defs / "shop").mkdir()
    text = textwrap.dedent(
        f"""
        type: {TYPE}
        attributes:
          name: shop
          catalog_dir: catalogs
          steps: [remove]
          packshots:
            channels: [amazon_main, kiosk, tall]
            presets:
              kiosk: {{width: 1200, height: 900, format: png}}
              tall: {{extends: ebay, fill: 0.7}}
        """
    )
    (defs / "shop" / "defs.yaml").write_text(text)
    for command in ("yaml", "defs"):
        check = dg(tmp_path, "check", command)
        assert check.returncode == 0, check.stdout + check.stderr

    (defs / "shop" / "defs.yaml").write_text(text.replace("height: 900", "heigth: 900"))
    check = dg(tmp_path, "check", "yaml")
    output = check.stdout + check.stderr
    assert check.returncode == 1, output
    assert (
        "attributes.packshots.presets.kiosk.heigth Additional properties are not allowed" in output
    ), output


def test_dg_check_yaml_names_a_bad_step_or_aspect_ratio_and_the_allowed_ones(tmp_path):
    """Values from a fixed set are schema enums: ``dg check yaml`` names the bad value and
    the allowed ones (not "is not valid under any of the given schemas")."""
    defs = dg_project(tmp_path)
    (defs / "spring").mkdir()
    (defs / "spring" / "defs.yaml").write_text(
        textwrap.dedent(
            f"""
            type: {TYPE}
            attributes:
              name: spring
              steps: [remove, replce]
              aspect_ratios: ["1:1", "4x5"]
            """
        )
    )
    check = dg(tmp_path, "check", "yaml")
    output = check.stdout + check.stderr
    assert check.returncode == 1, output
    for expected in (
        f"attributes.steps.1 'replce' is not one of {list(step_names())}",
        "attributes.aspect_ratios.1 '4x5' is not one of ['1:1', '2:3', '3:2', '3:4', '4:3', "
        "'4:5', '5:4', '9:16', '16:9']",
    ):
        assert expected in output, output


def test_dg_check_defs_names_two_components_with_different_resources(tmp_path):
    """Two components with different ``resource`` settings: ``dg check defs`` names both
    and says how to make them agree, where Dagster alone says "Definitions objects 1 and
    2 have different resources with same key 'bria'"."""
    defs = dg_project(tmp_path)
    (tmp_path / "catalogs").mkdir()
    for name, concurrency in (("spring", 32), ("autumn", 8)):
        (defs / name).mkdir()
        (defs / name / "defs.yaml").write_text(
            textwrap.dedent(
                f"""
                type: {TYPE}
                attributes:
                  name: {name}
                  steps: [remove]
                  resource: {{max_concurrency: {concurrency}}}
                """
            )
        )
    check = dg(tmp_path, "check", "defs")
    output = " ".join((check.stdout + check.stderr).split())
    assert check.returncode == 1, output
    assert "All component YAML validated successfully" in output, output
    assert (
        "ProductImagesComponent 'autumn' (src/shop/defs/autumn) and ProductImagesComponent "
        "'spring' (src/shop/defs/spring) set different `resource` settings (max_concurrency "
        "8 / 32), but a code location has one `bria` resource" in output
    ), output
    assert "different resources with same key" not in output, output
