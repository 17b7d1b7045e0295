"""One catalog row's trip: which of the package's modules it passes, and whether the core
ever calls up into the Dagster layer.

    python benchmarks/row_trip.py [--steps remove,replace,expand]

A one-row catalog (a generated photo) is materialized offline (local engine) through
``catalog_batch`` and the selected steps, with a profiler hook on every thread. Every
Python call into a module of ``bria_dagster`` is seen during the materialization only
(building the definitions and imports are not), with its caller's module. A call *carries
the row* when one of its arguments does: the sku's text, a mapping or object whose
``sku`` is it, a frame whose ``sku`` column holds it, or a list/tuple/dict of those (its
first items), one level deep, or an object whose attributes hold one (a job, a request).
Printed:

- ``ROW-TRIP modules=N``: the package modules with a call carrying the row (the row's
  trip, followed as one would by hand), grouped by top folder (layer); ``ran=M``: every
  package module whose code ran during the materialization;
- ``UP-CALLS n=K``: calls from a module of a lower layer (client, records, steps, lineage,
  ...) into the Dagster layer (``orchestration``): the core reaching up (through an
  import or a callback it was handed), then returning down. Target 0.

Module names are paths inside the package, so the script runs on any layout of it (on a
flat layout every module prints under ``bria_dagster`` and the up-call count is not
meaningful).
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import dagster as dg

import bria_dagster
from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.engine.synthetic import make_product_photo

PACKAGE = Path(bria_dagster.__file__).resolve().parent
LOWER = ("engine", "records", "client", "packshot", "steps", "lineage")
BATCH = "trip"


@functools.cache
def _module(filename: str) -> str | None:
    try:
        relative = Path(filename).resolve().relative_to(PACKAGE)
    except ValueError:
        return None
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


SKU = "sku-1"


def _carries(value: object, depth: int = 0) -> bool:
    """Whether ``value`` holds the row (see the module docs)."""
    if isinstance(value, str):
        return value == SKU
    if depth > 1 or value is None or isinstance(value, int | float | bytes | bool):
        return False
    if isinstance(value, dict):
        if value.get("sku") == SKU:
            return True
        return any(_carries(v, depth + 1) for v in list(value.values())[:4])
    if isinstance(value, list | tuple):
        return any(_carries(v, depth + 1) for v in value[:4])
    columns = getattr(value, "columns", None)
    if columns is not None and "sku" in columns:  # a DataFrame
        try:
            return bool((value["sku"] == SKU).any())
        except Exception:
            return False
    if getattr(value, "sku", None) == SKU:
        return True
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and depth == 0:
        return any(_carries(v, depth + 1) for v in list(attributes.values())[:8])
    return False


def _call_carries(frame, arguments: tuple[str, ...]) -> bool:
    # A profiler hook must never raise into the code it watches (a property that raises
    # on an object being built, a lazy attribute): such an argument does not carry it.
    try:
        return any(_carries(frame.f_locals.get(n)) for n in arguments if n != "self")
    except Exception:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="remove,replace,expand")
    args = parser.parse_args()
    steps = tuple(args.steps.split(","))

    folder = Path(tempfile.mkdtemp(prefix="row_trip_"))
    (folder / "catalogs").mkdir()
    (folder / "images").mkdir()
    (folder / "images" / "sku-1.jpg").write_bytes(
        make_product_photo("white_studio", 7, (256, 224))[0]
    )
    with (folder / "catalogs" / f"{BATCH}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "image_url"])
        writer.writeheader()
        writer.writerow({"sku": "sku-1", "image_url": "../images/sku-1.jpg"})

    pipeline = ProductImagePipeline(
        settings=PipelineSettings(
            catalog_dir=str(folder / "catalogs"), steps=steps, aspect_ratios=("4:5",)
        ),
        storage=str(folder / "data"),
    )
    assets = pipeline.build_assets()
    resources = {
        "bria": BriaResource(backend="local", file_roots=[str(folder)]),
        pipeline.io_manager_key: pipeline.io_manager(),
    }
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, [BATCH])

    modules: Counter[str] = Counter()
    carried: Counter[str] = Counter()
    up_calls: Counter[tuple[str, str]] = Counter()

    def hook(frame, event, _arg):
        if event != "call":
            return
        filename = frame.f_code.co_filename
        module = _module(filename)
        if module is None:
            return
        modules[module] += 1
        code = frame.f_code
        arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if module not in carried and _call_carries(frame, arguments):
            carried[module] += 1
        caller = frame.f_back
        if caller is None or not module.startswith("orchestration"):
            return
        caller_module = _module(caller.f_code.co_filename)
        if caller_module and caller_module.split(".")[0] in LOWER:
            up_calls[(caller_module, f"{module}.{frame.f_code.co_name}")] += 1

    threading.setprofile(hook)
    sys.setprofile(hook)
    try:
        result = dg.materialize(
            assets,
            partition_key=BATCH,
            instance=instance,
            resources=resources,
            selection=[pipeline.asset_key(s) for s in ("source", *steps)],
        )
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    if not result.success:
        print("the materialization failed", file=sys.stderr)
        return 1

    print(f"ROW-TRIP modules={len(carried)} ran={len(modules)} steps={','.join(steps)}")
    by_layer: dict[str, list[str]] = {}
    for module in sorted(carried):
        by_layer.setdefault(module.split(".")[0] if "." in module else "(top)", []).append(module)
    for layer, names in by_layer.items():
        print(f"  {layer}: {len(names)}: {', '.join(names)}")
    print(f"UP-CALLS n={sum(up_calls.values())}")
    for (caller, callee), count in up_calls.most_common():
        print(f"  {caller} -> {callee} x{count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
