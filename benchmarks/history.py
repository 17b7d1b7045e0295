"""A step's cost independent of history: a new batch over millions of earlier records.

    .venv/bin/python benchmarks/history.py [--records 10000000] [--batches 200]
        [--base DIR] [--products 10] [--runs 3] [--rerun-products 200] [--size 256]

1. History: ``--records`` synthetic earlier records in ``--batches`` partitions
   (``benchmarks/lineage.py``'s generator, written under the pipeline's own table
   folders ``<base>/tables/product_images__<asset>/``), then their reuse index
   built by :func:`bria_dagster.records.reuse.rebuild` (the code path a lookup uses to
   index tables it finds without entries). With ``--base`` an existing history
   of the same size is kept and re-used.
2. A new ``--products`` batch on the local engine (distinct products every run,
   so nothing can be reused), materialized like the tests do, each run in a fresh
   subprocess: on an empty store, then on the history store. Wall time of the
   materialization (median of ``--runs``) and peak RSS of the subprocess
   (``VmHWM``, largest of the runs).
3. An unchanged ``--rerun-products`` batch re-run on the history store: its
   backend calls (from the ``backend_calls`` metadata) must be 0.

Prints ``HISTORY records=... new_batch_s=... empty_store_s=... peak_rss_mb=...``;
the issue's target: new_batch_s within 1.5x of empty_store_s, peak RSS under
500 MB, 0 calls on the re-run.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PIPELINE = "product_images"
RATIOS = ("1:1", "4:5")
RESULT_PREFIX = "RESULT "
TIME_FACTOR = 1.5
RSS_TARGET_MB = 500.0


def write_catalog(folder: Path, batch: str, n: int, size: int, seed0: int) -> None:
    """``<folder>/catalogs/<batch>.csv`` with ``n`` distinct generated product photos."""
    from bria_dagster.engine.synthetic import CATEGORIES, SHAPES, make_product_photo

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "catalogs").mkdir(parents=True, exist_ok=True)
    with (folder / "catalogs" / f"{batch}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "image_url"])
        for i in range(n):
            category = CATEGORIES[i % len(CATEGORIES)]
            shape = SHAPES[(i // len(CATEGORIES)) % len(SHAPES)]
            jpeg, _ = make_product_photo(category, seed0 + i, (size, size), shape=shape)
            image = folder / "images" / f"{batch}-{i:05d}.jpg"
            image.write_bytes(jpeg)
            writer.writerow([f"{batch.upper()}-{i:05d}", str(image)])


# --------------------------------------------------------------------------- the worker


def worker(folder: str, storage: str, batch: str) -> dict[str, Any]:
    """Materialize ``batch`` of the catalogs in ``folder`` on ``storage``, local engine."""
    import dagster as dg

    from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline

    # No audit report: what grows with history (reuse lookups) is what is measured.
    settings = PipelineSettings(
        catalog_dir=f"{folder}/catalogs", aspect_ratios=RATIOS, report=False
    )
    pipeline = ProductImagePipeline(name=PIPELINE, settings=settings, storage=storage)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, [batch])
    assets = pipeline.build_assets()
    resources = {
        "bria": BriaResource(backend="local", file_roots=[folder]),
        pipeline.io_manager_key: pipeline.io_manager(),
    }
    started = time.perf_counter()
    result = dg.materialize(
        assets,
        partition_key=batch,
        instance=instance,
        resources=resources,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    wall = time.perf_counter() - started
    if not result.success:
        raise RuntimeError(f"batch {batch} failed")
    calls = reused = 0
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        calls += int(getattr(meta.get("backend_calls"), "value", 0) or 0)
        reused += int(getattr(meta.get("rows_reused"), "value", 0) or 0)
    return {
        "wall_s": wall,
        "calls": calls,
        "rows_reused": reused,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM``, not ``ru_maxrss`` (which a child started from
    this benchmark inherits across fork and exec: it would report the generator's peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(folder: Path, storage: str, batch: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", str(folder), storage, batch]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"worker for {batch} on {storage} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# --------------------------------------------------------------------------- the history


def ensure_history(base: Path, records: int, batches: int) -> None:
    """Generate the earlier records and index them (kept in ``base`` for the next run)."""
    from lineage import generate

    from bria_dagster.records.reuse import rebuild

    done = base / "history.json"
    wanted = {"records": records, "batches": batches, "prefix": f"{PIPELINE}__"}
    if done.exists() and json.loads(done.read_text()) == wanted:
        print(f"history: {records:,} records in {batches} batches already in {base}")
        return
    start = time.perf_counter()
    generate(base, records, batches, asset_prefix=f"{PIPELINE}__")
    print(f"history: generated {records:,} records in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    tables = rebuild(str(base))
    print(
        f"history: reuse index built from {sum(tables.values())} tables in "
        f"{time.perf_counter() - start:.1f} s (peak RSS of this process so far "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )
    files = list((base / "reuse").rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"history: index {size / 1e6:.0f} MB in {len(files)} files")
    done.write_text(json.dumps(wanted))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--base", help="keep the history store here (default: a temp folder)")
    parser.add_argument("--products", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rerun-products", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="product photo size, px")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bria-history-") as tmp:
        work = Path(tmp)
        base = Path(args.base) if args.base else work / "history"
        base.mkdir(parents=True, exist_ok=True)
        ensure_history(base, args.records, args.batches)

        catalogs = work / "catalogs"
        stamp = time.strftime("%H%M%S")
        seed_base = int(time.time()) % 100_000 * 10_000  # never an earlier run's products
        empty, history = [], []
        for run in range(args.runs):
            for kind, runs in (("empty", empty), ("history", history)):
                batch = f"new-{kind}-{stamp}-{run}"
                seed0 = seed_base + 1_000 * run + (500 if kind == "history" else 0)
                write_catalog(catalogs, batch, args.products, args.size, seed0)
                storage = str(work / f"empty-{run}") if kind == "empty" else str(base)
                out = run_worker(catalogs, storage, batch)
                if out["calls"] == 0:
                    raise SystemExit(f"{batch}: a new batch made no calls: not a new batch")
                runs.append(out)
                print(
                    f"  {kind:<8} run {run + 1}: {out['wall_s']:.2f} s, {out['calls']} calls, "
                    f"peak RSS {out['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        new_s = statistics.median(r["wall_s"] for r in history)
        empty_s = statistics.median(r["wall_s"] for r in empty)
        peak = max(r["peak_rss_mb"] for r in history)
        print(
            f"HISTORY records={args.records} new_batch_s={new_s:.2f} empty_store_s={empty_s:.2f} "
            f"peak_rss_mb={peak:.0f}"
        )

        batch = f"rerun-{stamp}"
        write_catalog(catalogs, batch, args.rerun_products, args.size, seed_base + 5_000)
        first = run_worker(catalogs, str(base), batch)
        again = run_worker(catalogs, str(base), batch)
        print(
            f"RERUN products={args.rerun_products} first_s={first['wall_s']:.2f} "
            f"first_calls={first['calls']} rerun_s={again['wall_s']:.2f} "
            f"rerun_calls={again['calls']} rows_reused={again['rows_reused']}"
        )

    checks = {
        f"new batch within {TIME_FACTOR}x of the empty store": new_s <= TIME_FACTOR * empty_s,
        f"peak RSS under {RSS_TARGET_MB:.0f} MB": peak < RSS_TARGET_MB,
        "unchanged re-run makes 0 calls": again["calls"] == 0,
    }
    for label, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {label}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(RESULT_PREFIX + json.dumps(worker(*sys.argv[2:5])), flush=True)
        raise SystemExit(0)
    raise SystemExit(main())
