"""The package's folders are its layers: imports only go down, never in a loop, and only the
Dagster layer and the CLI import Dagster.

Read from the source (every import statement, at any depth: module level, inside functions
and under ``TYPE_CHECKING``), so a lazy or type-only import up the layers fails as well.
Lowest first::

    errors, _version < engine < records < client < packshot < steps < lineage
        < orchestration (the Dagster layer) < cli < testing < bria_dagster/__init__.py

A module may import its own layer or a lower one. Importing ``a.b.c`` runs the
``__init__`` of ``a`` and ``a.b`` too, so those count as imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bria_dagster"
LAYERS = (
    ("errors", "_version"),
    ("engine",),
    ("records",),
    ("client",),
    ("packshot",),
    ("steps",),
    ("lineage",),
    ("orchestration",),
    ("cli",),
    ("testing",),
)
DAGSTER_LAYERS = {"orchestration", "cli"}
"""Where Dagster may be imported: the Dagster layer and the command line."""
DAGSTER_FREE_SHARE = 0.78


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _with_parents(module: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` importing it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()


@cache
def imports_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(modules of the package, top-level third-party names) that ``module`` imports."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    own: set[str] = set()
    other: set[str] = set()
    here = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from x import y``: y may be a module of x
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "bria_dagster":
                if name in MODULES:
                    own |= _with_parents(name)
            elif name:
                other.add(name.split(".")[0])
    own.discard(module)
    return frozenset(own), frozenset(other)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # bria_dagster/__init__.py: re-exports every layer
        return len(LAYERS)
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {__file__}")


def _reaches_dagster(module: str) -> list[str] | None:
    """The import path from ``module`` to Dagster, or None when it never gets there."""
    seen = {module}
    stack = [(module, [module])]
    while stack:
        current, path = stack.pop()
        own, other = imports_of(current)
        if any(name.startswith("dagster") for name in other):
            return path
        # bria_dagster/__init__.py re-exports lazily (PEP 562): at run time it imports only
        # _version; its TYPE_CHECKING imports are for type checkers (and for the loop and
        # layer tests above), so it leads nowhere here. Checked at run time below.
        for name in sorted(own - seen - {"bria_dagster"}):
            seen.add(name)
            stack.append((name, [*path, name]))
    return None


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_up_a_layer():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
        f"({LAYERS[layer_of(target)][0] if layer_of(target) < len(LAYERS) else 'the package'})"
        for module in sorted(MODULES)
        for target in sorted(imports_of(module)[0])
        if layer_of(target) > layer_of(module) and target != "bria_dagster"
    ]
    assert upward == []


def test_no_modules_import_each_other_in_a_loop():
    # Tarjan's strongly connected components over the import graph; package __init__s
    # that importing a submodule runs are edges of their own (see imports_of).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in imports_of(module)[0]:
            if target == "bria_dagster" or _is_parent(target, module):
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert loops == []


def _is_parent(package: str, module: str) -> bool:
    """Importing a submodule runs its package's ``__init__``: not a loop of the submodule's."""
    return module.startswith(package + ".")


def test_only_the_dagster_layer_and_the_cli_import_dagster():
    offenders = {
        module: " -> ".join(path)
        for module in sorted(MODULES)
        if layer_of(module) < len(LAYERS)
        and LAYERS[layer_of(module)][0] not in DAGSTER_LAYERS
        and (path := _reaches_dagster(module))
    }
    assert offenders == {}


def test_most_of_the_package_is_dagster_free():
    lines = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    free = sum(n for module, n in lines.items() if _reaches_dagster(module) is None)
    share = free / sum(lines.values())
    assert share >= DAGSTER_FREE_SHARE, f"{share:.1%} of the package's lines are Dagster-free"


def test_importing_the_dagster_free_layers_loads_no_dagster():
    free = [
        module
        for module in sorted(MODULES)
        if layer_of(module) < len(LAYERS)
        and LAYERS[layer_of(module)][0] not in DAGSTER_LAYERS
        and not module.endswith(".__main__")  # runs its command when imported
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {free!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
