"""Lineage queries over millions of ImageRecord rows: index build, trace, derived, CLI end to end.

    .venv/bin/python benchmarks/lineage.py [--records 1000000] [--batches 50] [--base DIR]
        [--in-memory | --no-in-memory]

Synthetic but realistic records: per sku one remove, one replace and two expand
rows (random sha256 values, consistent parent links, about 1% failed expansions,
some cutouts reused by a second run), written as Parquet partitions in the
storage layout ``<base>/tables/<asset_name>/<partition>.parquet``, one table at a time.
The targets (issue 20, at 10,000,000 records): at most 1 s per CLI answer, at most
120 s for the first index build, at most 2 GB peak RSS.

The CLI answers from the SQLite index ``<base>/tables/_lineage.sqlite``: the
benchmark times its first build in a process of its own (wall time and peak RSS), a
no-change sync, a sync after one table changed, and the CLI end to end with a current
index (median of 5 subprocess runs each, and their peak RSS), and prints PASS/FAIL for
each target. Up to 2,000,000 records (or with ``--in-memory``) it also times pandas
loads and an index built in memory (``--no-index``); above that they would need tens of
GB. ``--base DIR`` keeps the store, and a later run with the same ``--base`` reuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bria_dagster.lineage import database as lineage_database  # noqa: E402
from bria_dagster.lineage import index as lineage_index  # noqa: E402
from bria_dagster.lineage.frame import load_records  # noqa: E402
from bria_dagster.records.schema import INDEXED_COLUMNS  # noqa: E402
from bria_dagster.records.tables import IMAGE_RECORD_SCHEMA  # noqa: E402

TARGET_S = 1.0
BUILD_TARGET_S = 120.0
RSS_TARGET = 2_000_000_000
IN_MEMORY_UP_TO = 2_000_000  # above this, the in-memory sections would need tens of GB
CLI_RUNS = 5
STEPS = (  # step, asset, endpoint, price, rows per sku
    ("remove", "product_cutouts", "fal-ai/bria/background/remove", 0.018),
    ("replace", "product_scenes", "fal-ai/bria/background/replace", 0.023),
    ("expand", "product_expansions", "fal-ai/bria/expand", 0.04),
    ("expand", "product_expansions", "fal-ai/bria/expand", 0.04),
)
RATIOS = ("1:1", "16:9")


def random_shas(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8).tobytes().hex()
    return np.array([raw[i : i + 64] for i in range(0, 64 * n, 64)], dtype=object)


def generate(
    base: Path, n_records: int, n_batches: int, seed: int = 7, asset_prefix: str = ""
) -> dict[str, str]:
    """Write the synthetic store; return sample names to query.

    ``asset_prefix``: put before each table folder's name, e.g. ``product_images__`` for
    the tables of the pipeline ``product_images`` (``benchmarks/history.py``)."""
    rng = np.random.default_rng(seed)
    n_skus = n_records // len(STEPS)
    skus = np.array([f"SKU-{i:07d}" for i in range(n_skus)], dtype=object)
    batch_of_sku = np.arange(n_skus) * n_batches // n_skus
    source = random_shas(rng, n_skus)
    cutout = random_shas(rng, n_skus)
    scene = random_shas(rng, n_skus)
    expands = [random_shas(rng, n_skus) for _ in RATIOS]
    failed = [rng.random(n_skus) < 0.01 for _ in RATIOS]
    t0 = np.datetime64("2026-11-01T00:00:00", "us")  # naive values are read as UTC
    minutes = np.timedelta64(60_000_000, "us")

    images = (cutout, scene, *expands)
    parents = (source, cutout, scene, scene)
    variants = ("", "0", "0-1:1", "0-16:9")
    params = (
        '{"sync_mode":false}',
        '{"num_images":1,"prompt":"on a marble kitchen counter, morning light","sync_mode":false}',
        '{"aspect_ratio":"1:1","sync_mode":false}',
        '{"aspect_ratio":"16:9","sync_mode":false}',
    )
    for batch in range(n_batches):
        in_batch = np.flatnonzero(batch_of_sku == batch)
        n = len(in_batch)
        partition = f"batch-{batch:04d}"
        run_id = f"run-{batch:04d}"
        created = t0 + batch * 30 * minutes
        for k, (step, asset, endpoint, price) in enumerate(STEPS):
            sha = images[k][in_batch]
            status = np.full(n, "ok", dtype=object)
            if step == "expand":
                bad = failed[k - 2][in_batch]
                status[bad] = "failed"
                sha = np.where(bad, None, sha)
            ok = status == "ok"
            uri = [
                f"s3://shop-media/bria/images/sha256/{s[:2]}/{s}.png" if s else None for s in sha
            ]
            columns = {
                "record_id": random_shas(rng, n),
                "partition": np.full(n, partition, dtype=object),
                "sku": skus[in_batch],
                "step": np.full(n, step, dtype=object),
                "variant": np.full(n, variants[k], dtype=object),
                "status": status,
                "error_class": np.where(ok, None, "FalRequestError"),
                "error_message": np.where(ok, None, "fal rejected the request (422): bad canvas"),
                "image_uri": uri,
                "image_sha256": sha,
                "width": np.where(ok, 1024, 0).astype(np.int32),
                "height": np.where(ok, 1024, 0).astype(np.int32),
                "content_type": np.where(ok, "image/png", None),
                "parent_sha256": parents[k][in_batch],
                "root_source_uri": [f"https://cdn.shop.example/p/{s}.jpg" for s in skus[in_batch]],
                "root_source_sha256": source[in_batch],
                "endpoint_id": np.full(n, endpoint, dtype=object),
                "backend": np.full(n, "fal", dtype=object),
                "parameters": np.full(n, params[k], dtype=object),
                "request_fingerprint": random_shas(rng, n),
                "seed": rng.integers(0, 2**31, n) if step == "replace" else np.full(n, None),
                "request_id": [f"{r[:8]}-{r[8:12]}-{r[12:16]}" for r in random_shas(rng, n)],
                "noop_reason": np.full(n, None, dtype=object),
                "cost_usd": np.where(ok, price, 0.0),
                "unit_price_usd": np.where(ok, price, None),
                "duration_s": rng.gamma(2.0, 2.0, n),
                "attempts": np.ones(n, dtype=np.int32),
                "run_id": np.full(n, run_id, dtype=object),
                "reused_in_run_id": np.full(n, None, dtype=object),
                "asset_key": np.full(n, asset, dtype=object),
                "code_version": np.full(n, "1", dtype=object),
                "created_at": np.full(n, created + k * minutes),
                "catalog_row": [f'{{"sku":"{s}"}}' for s in skus[in_batch]],
            }
            table = pa.Table.from_pydict(
                {
                    name: pa.array(columns[name], type=IMAGE_RECORD_SCHEMA.field(name).type)
                    for name in IMAGE_RECORD_SCHEMA.names
                },
                schema=IMAGE_RECORD_SCHEMA,
            )
            folder = base / "tables" / f"{asset_prefix}{asset}"
            folder.mkdir(parents=True, exist_ok=True)
            name = partition if variants[k] != "0-16:9" else f"{partition}-wide"
            pq.write_table(table, folder / f"{name}.parquet")
    middle = n_skus // 2
    ok_expand = next(i for i in range(middle, n_skus) if not failed[1][i])
    return {
        "expand_output": expands[1][ok_expand],
        "sku": skus[middle],
        "source_sha": source[middle],
        "scene_sha": scene[middle],
    }


def timed(label: str, func, results: list[tuple[str, float]]):
    start = time.perf_counter()
    value = func()
    elapsed = time.perf_counter() - start
    results.append((label, elapsed))
    print(f"  {label:<52} {elapsed * 1000:9.1f} ms", flush=True)
    return value


PEAK_RSS_AT_EXIT = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as fh:\n"
    "        kb = next(line.split()[1] for line in fh if line.startswith('VmHWM'))\n"
    "    print('VmHWM', kb, file=sys.stderr)\n"
    "atexit.register(_peak)\n"
)
"""Prepended to a measured child's code: its peak RSS (VmHWM, of the process after exec;
ru_maxrss would include this large parent's pages copied at fork) as its last stderr line."""


def measured(code: str) -> tuple[float, int, str]:
    """Run ``python -c CODE``: wall seconds, peak RSS in bytes, stderr (without the peak)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_AT_EXIT + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    *lines, peak = done.stderr.splitlines() or [""]
    if done.returncode != 0 or not peak.startswith("VmHWM"):
        raise SystemExit(f"{code} failed ({done.returncode}): {done.stderr}")
    return elapsed, int(peak.split()[1]) * 1024, "\n".join(lines)


def cli_code(args: list[str]) -> str:
    """What ``bria-dagster ARGS`` runs."""
    return f"from bria_dagster.cli import main; sys.exit(main({args!r}))"


def cli_median(label: str, args: list[str], runs: int = CLI_RUNS) -> tuple[float, int]:
    """Median wall time of ``runs`` CLI subprocesses (interpreter start included) and
    their largest peak RSS."""
    times, peaks = zip(*(measured(cli_code(args))[:2] for _ in range(runs)), strict=True)
    median = statistics.median(times)
    shown = ", ".join(f"{t * 1000:.0f}" for t in times)
    print(
        f"  {label:<52} {median * 1000:9.1f} ms  (median of {runs}: {shown}; "
        f"peak RSS {max(peaks) / 1e6:.0f} MB)",
        flush=True,
    )
    return median, max(peaks)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def indexed_section(base: Path, names: dict[str, str], records: int, in_memory: bool) -> bool:
    """Build the SQLite index, then time the CLI with (and without) it; True when it passes."""
    print()
    print("SQLite lineage index (the CLI's path for local bases)")
    index_file = Path(lineage_database.index_path(base))
    for leftover in index_file.parent.glob(f"{index_file.name}*"):
        leftover.unlink()  # time a first build, not an earlier run's index
    code = (
        "from bria_dagster.lineage import index; "
        f"print(index.sync({str(base)!r}).summary(), file=sys.stderr)"
    )
    build, build_rss, summary = measured(code)
    print(
        f"  {'index build (first sync, own process)':<52} {build * 1000:9.1f} ms  "
        f"({summary.strip()})"
    )
    print(f"  {'index build peak RSS':<52} {build_rss / 1e6:9.0f} MB")
    size = sum(f.stat().st_size for f in index_file.parent.glob(f"{index_file.name}*"))
    print(f"  index file size: {size / 1e6:.0f} MB")
    start = time.perf_counter()
    again = lineage_index.sync(base)
    print(
        f"  {'sync with nothing changed (stat only)':<52} "
        f"{(time.perf_counter() - start) * 1000:9.1f} ms  (changed: {again.changed})"
    )
    one = sorted((base / "tables").glob("*/*.parquet"))[0]
    now = time.time_ns()
    os.utime(one, ns=(now, now))  # as if the pipeline rewrote one partition
    start = time.perf_counter()
    changed = lineage_index.sync(base)
    print(
        f"  {'sync after one table changed':<52} "
        f"{(time.perf_counter() - start) * 1000:9.1f} ms  ({changed.summary()})"
    )
    queries = {
        "trace": ["lineage", "trace", names["expand_output"], "--base", str(base)],
        "trace (12-char prefix)": [
            "lineage",
            "trace",
            names["expand_output"][:12],
            "--base",
            str(base),
        ],
        "derived (sku)": ["lineage", "derived", names["sku"], "--base", str(base)],
        "derived (source sha, json)": [
            "lineage",
            "derived",
            names["source_sha"],
            "--base",
            str(base),
            "--format",
            "json",
        ],
        "derived (intermediate sha)": [
            "lineage",
            "derived",
            names["scene_sha"],
            "--base",
            str(base),
        ],
    }
    indexed = {label: cli_median(f"CLI indexed: {label}", args) for label, args in queries.items()}
    if in_memory:
        for label in ("trace", "derived (sku)"):
            cli_median(
                f"CLI --no-index (in memory): {label}", [*queries[label], "--no-index"], runs=3
            )
    traces = max(t for label, (t, _) in indexed.items() if label.startswith("trace"))
    deriveds = max(t for label, (t, _) in indexed.items() if label.startswith("derived"))
    cli_rss = max(rss for _, rss in indexed.values())
    checks = [
        (f"CLI trace, worst median {traces:.3f} s", traces <= TARGET_S, f"<= {TARGET_S:.0f} s"),
        (
            f"CLI derived, worst median {deriveds:.3f} s",
            deriveds <= TARGET_S,
            f"<= {TARGET_S:.0f} s",
        ),
        (f"first index build {build:.1f} s", build <= BUILD_TARGET_S, f"<= {BUILD_TARGET_S:.0f} s"),
        (f"peak RSS of the build {build_rss / 1e9:.2f} GB", build_rss <= RSS_TARGET, "<= 2 GB"),
        (f"peak RSS of the CLI {cli_rss / 1e9:.2f} GB", cli_rss <= RSS_TARGET, "<= 2 GB"),
    ]
    print()
    print(f"over {records:,} records (indexed CLI end to end, local base):")
    for text, ok, target in checks:
        print(f"  {verdict(ok)}: {text} (target {target})")
    return all(ok for _, ok, _ in checks)


def in_memory_section(base: Path, names: dict[str, str]) -> None:
    """pandas loads and an index built in memory (``--no-index``), queried in process."""
    results: list[tuple[str, float]] = []
    timed("load_records (all 30 columns)", lambda: load_records(base), results)
    frame = timed(
        f"load_records (indexed columns, {len(INDEXED_COLUMNS)})",
        lambda: load_records(base, columns=INDEXED_COLUMNS),
        results,
    )
    print(f"  rows loaded: {len(frame):,}")
    load_label = "index in memory (--no-index: read and index every table)"
    index = timed(load_label, lambda: lineage_index.open_index(base, persist=False), results)

    answers = [
        ("trace expand output (full sha)", lambda: index.trace(names["expand_output"])),
        (
            "trace expand output (12-char prefix)",
            lambda: index.trace(names["expand_output"][:12]),
        ),
        (
            "trace expand output (stored path)",
            lambda: index.trace(f"/anywhere/{names['expand_output']}.png"),
        ),
        ("derived of a sku", lambda: index.derived(names["sku"])),
        ("derived of a source sha", lambda: index.derived(names["source_sha"])),
        ("derived of an intermediate (scene) sha", lambda: index.derived(names["scene_sha"])),
    ]
    query_times = []
    for label, func in answers:
        out = timed(label, func, results)
        query_times.append(results[-1][1])
        print(f"    -> {len(out.rows)} rows, steps {[row['step'] for row in out.rows]}")
    index.close()

    for label, code in (
        ("pandas: python + pandas/pyarrow imports", "import pandas, pyarrow.dataset"),
        (
            "DataFrames: python + import bria_dagster.lineage.frame",
            "import bria_dagster.lineage.frame",
        ),
    ):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        print(f"  {label:<52} {(time.perf_counter() - start) * 1000:9.1f} ms")

    worst = max(query_times)
    print()
    print(
        f"queries after loading: worst {worst * 1000:.1f} ms -> "
        f"{'meets' if worst < TARGET_S else 'MISSES'} the < {TARGET_S:.0f} s target"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--base", help="reuse/keep the store here (default: a temp folder)")
    parser.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time pandas loads and --no-index (default: up to 2,000,000 records)",
    )
    args = parser.parse_args()
    in_memory = args.records <= IN_MEMORY_UP_TO if args.in_memory is None else args.in_memory

    with tempfile.TemporaryDirectory(prefix="bria-lineage-") as tmp:
        base = Path(args.base or tmp)
        results: list[tuple[str, float]] = []
        print(f"records: {args.records:,} in {args.batches} batches under {base}")
        saved = base / "benchmark_names.json"
        if args.base and saved.exists():  # reuse the store an earlier run left in --base
            names = json.loads(saved.read_text())
        else:
            names = timed(
                "generate + write Parquet",
                lambda: generate(base, args.records, args.batches),
                results,
            )
            saved.write_text(json.dumps(names))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(f"  generator peak RSS: {peak / 1e6:.0f} MB (writes one table at a time)")
        size = sum(f.stat().st_size for f in (base / "tables").rglob("*.parquet"))
        print(f"  store size: {size / 1e6:.0f} MB in {len(list(base.rglob('*.parquet')))} files")

        if in_memory:
            in_memory_section(base, names)
        passed = indexed_section(base, names, args.records, in_memory)
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
