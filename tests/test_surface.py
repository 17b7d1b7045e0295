"""The public surface: what a definitions.py needs, nothing that shadows Dagster; the library
registered with Dagster; type information shipped (PEP 561)."""

import importlib.resources
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg

import bria_dagster

REPO = Path(__file__).resolve().parents[1]


def test_the_top_level_names_are_the_user_facing_ones_and_shadow_nothing_of_dagster():
    names = set(bria_dagster.__all__) - {"__version__"}
    assert 15 <= len(names) <= 25, sorted(names)
    assert not names & set(dir(dg)), names & set(dir(dg))
    for name in names:  # each one resolves (the lazy imports are right)
        assert getattr(bria_dagster, name) is not None
    # Internals stay importable from their modules.
    from bria_dagster.client.backends.fal import FalBackend
    from bria_dagster.client.retry import RetryPolicy
    from bria_dagster.client.runner import run_batch

    assert FalBackend and RetryPolicy and run_batch
    assert "RetryPolicy" not in names  # it used to shadow dagster.RetryPolicy


def test_the_resource_description_shown_in_the_ui_has_no_code_literal():
    description = bria_dagster.BriaResource.__doc__ or ""
    assert "fal" in description and "embedded engine" in description
    assert "Example::" not in description


def test_the_dagster_layer_registers_the_library_and_the_package_alone_imports_no_dagster():
    from dagster_shared.libraries import DagsterLibraryRegistry

    import bria_dagster.orchestration

    assert DagsterLibraryRegistry.get()["bria-dagster"] == bria_dagster.__version__
    code = (
        "import sys, bria_dagster; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0].startswith('dagster')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_py_typed_is_in_the_package_and_declared_as_package_data():
    assert (importlib.resources.files("bria_dagster") / "py.typed").is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["bria_dagster"]


def test_the_testing_package_without_its_extra_names_the_extra():
    code = "import sys; sys.modules['trustme'] = None; import bria_dagster.testing"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: bria_dagster.testing needs trustme")
    assert "pip install 'bria-dagster[testing]'" in last
