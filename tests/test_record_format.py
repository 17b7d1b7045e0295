"""Step names and record columns each have one owner, and are listed nowhere else.

``bria_dagster/records/schema.py`` names the statuses, the columns and the groups of
columns each reader needs; each step's module declares its step
(:mod:`bria_dagster.steps.registry` lists them); everything else imports them. A list,
tuple or set written as literals that holds two or more step names, or three or more
record column names, anywhere else in the package is a second copy that can drift: this
test names it.
The schema module itself imports neither pandas, pyarrow nor Dagster, so the CLI's
fast lineage path can use it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bria_dagster
from bria_dagster.records.schema import COLUMNS
from bria_dagster.steps.registry import step_names
from bria_dagster.steps.step import SOURCE

PACKAGE = Path(bria_dagster.__file__).parent
OWNERS = {"records/schema.py"}
"""The module that owns the column names (step names have no list to own: each step's
module declares its own name)."""
OTHER_FORMATS = {"steps/export.py"}
"""Modules whose lists name columns of another format that share record column names
(the channel manifest: ``sku``, ``width``, ``height``, ``run_id`` of each exported file)."""
STEP_NAMES = {SOURCE, *step_names(), "packshot"}
MIN_STEPS, MIN_COLUMNS = 2, 3


def literal_collections(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """(line, strings) of every list, tuple or set display whose items include strings."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            strings = [
                item.value
                for item in node.elts
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
            ]
            if strings:
                found.append((node.lineno, strings))
    return found


def copies(root: Path = PACKAGE) -> list[str]:
    """Where a list of step names or record columns is written outside its owner."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in OWNERS or relative in OTHER_FORMATS:
            continue
        for line, strings in literal_collections(ast.parse(path.read_text(), str(path))):
            steps = sorted(STEP_NAMES.intersection(strings))
            columns = sorted(set(COLUMNS).intersection(strings))
            if len(steps) >= MIN_STEPS:
                found.append(f"{relative}:{line}: step names {steps}")
            if len(columns) >= MIN_COLUMNS:
                found.append(f"{relative}:{line}: record columns {columns}")
    return found


def test_step_names_and_record_columns_are_listed_only_by_their_owner():
    found = copies()
    assert not found, (
        "import the names instead of writing them again: step names from the step "
        "declarations (bria_dagster.steps.registry), columns from bria_dagster.records.schema "
        "(COLUMNS and its column groups):\n" + "\n".join(found)
    )


def test_the_scan_finds_a_copy(tmp_path):
    (tmp_path / "copy.py").write_text(
        'ORDER = ("remove", "expand")\nSHOWN = ["sku", "step", "image_sha256"]\nOK = ("sku",)\n'
    )
    assert copies(tmp_path) == [
        "copy.py:1: step names ['expand', 'remove']",
        "copy.py:2: record columns ['image_sha256', 'sku', 'step']",
    ]


def test_the_schema_module_imports_no_pandas_pyarrow_or_dagster():
    code = (
        "import sys; import bria_dagster.records.schema; "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'dagster', 'fsspec') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
