"""The ``bria-dagster`` command: lineage queries over the record tables, and the demo.

    bria-dagster lineage trace <image path | sha256> [--base DIR] [--format table|json|csv]
    bria-dagster lineage derived <sku | source sha256 | uri> [--base DIR] [--format ...]
        (both take --no-index: index the Parquet tables in memory, no cache file)
    bria-dagster lineage report --batch NAME [--out FILE.html] [--base DIR] [--pipeline NAME]
        (one self-contained HTML page: failures, cost per step, every sku's chain of images)
    bria-dagster batches add [BATCH ...] [--pipeline NAME] [--catalog-dir DIR]
                             [-f FILE | -m MODULE]
    bria-dagster batches list [--pipeline NAME] [-f FILE | -m MODULE]
        (batches are the pipeline's partitions in the Dagster instance at $DAGSTER_HOME;
        without --pipeline, the one pipeline of the code location: -f / -m, or the
        project of the nearest pyproject.toml with [tool.dg] or [tool.dagster])
    bria-dagster reuse rebuild [--base DIR] [--asset NAME ...]
        (drops the reuse index and derives it again from the record tables)
    bria-dagster demo [--base DIR]

The queries run over a SQLite cache of the record tables, brought up to date
(changed tables only) before every query; a one-line note on stderr says when tables
were (re)indexed. For a local base it is ``<base>/tables/_lineage.sqlite``; for an
fsspec URL (``s3://bucket/prefix``) it lives on this machine, in ``--cache-dir`` or
``$BRIA_DAGSTER_CACHE_DIR`` or ``$XDG_CACHE_HOME/bria-dagster`` (``~/.cache/bria-dagster``),
and is never written to the bucket. S3 endpoint and keys come from the standard AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...).

User errors (unknown image, unreadable store) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from ..errors import BriaError

__all__ = ["main"]

EXIT_USAGE = 2
DEMO_MODULE = "bria_dagster.cli.demo"
FORMATS = ("table", "json", "csv")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bria-dagster",
        description="Bria image pipeline on Dagster: lineage queries and the offline demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lineage = commands.add_parser("lineage", help="where an image came from, what a source became")
    queries = lineage.add_subparsers(dest="query", required=True, metavar="QUERY")
    trace = queries.add_parser(
        "trace", help="the chain from an output image back to its catalog source"
    )
    trace.add_argument("image", help="a stored image path or URI, a sha256, or a sha256 prefix")
    trace.add_argument(
        "--all-records",
        action="store_true",
        help="list every run's row for each hop, not only the most recent",
    )
    derived = queries.add_parser("derived", help="every image made from a sku or source image")
    derived.add_argument("source", help="a sku, a source or image sha256, or a source URI")
    derived.add_argument(
        "--include-failed", action="store_true", help="also list failed rows (flagged)"
    )
    report = queries.add_parser(
        "report",
        help="write a batch's audit report: one self-contained HTML page",
        description="Write the audit report of one catalog batch: failures in full, cost per "
        "step, runs, and every sku's chain of images with thumbnails, in one HTML file that "
        "needs nothing else to open.",
    )
    report.add_argument("--batch", required=True, help="the catalog batch (partition key)")
    report.add_argument(
        "--out",
        help="where to write the page: a path or fsspec URL "
        "(default: <base>/reports/<pipeline>/<batch>.html)",
    )
    report.add_argument(
        "--pipeline", default="product_images", help="pipeline name (default: product_images)"
    )
    report.add_argument(
        "--thumbnail-px",
        type=int,
        default=160,
        help="longest side of the thumbnails, in pixels (default: 160)",
    )
    _add_base(report)
    for sub in (trace, derived):
        _add_base(sub)
        sub.add_argument(
            "--format", choices=FORMATS, default="table", help="output format (default: table)"
        )
        sub.add_argument(
            "--no-index",
            action="store_true",
            help="index the Parquet tables in memory instead of using the cached index "
            "(<base>/tables/_lineage.sqlite, or for an fsspec URL a file in the cache folder)",
        )
        sub.add_argument(
            "--cache-dir",
            help="local folder for the lineage index of an fsspec URL such as s3://... "
            "(default: $BRIA_DAGSTER_CACHE_DIR, else $XDG_CACHE_HOME/bria-dagster, "
            "else ~/.cache/bria-dagster); never written to the bucket",
        )

    batches = commands.add_parser(
        "batches", help="add or list a pipeline's catalog batches (partitions) by hand"
    )
    actions = batches.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", help="add batches as partitions (then launch them with --partition)"
    )
    add.add_argument(
        "batch",
        nargs="*",
        help="batch names (default: every catalog file in the pipeline's catalog folder)",
    )
    add.add_argument(
        "--catalog-dir",
        help="the pipeline's catalog folder, where each batch's file is checked (default: the "
        "pipeline's catalog_dir, read from its code location)",
    )
    listing = actions.add_parser("list", help="the batches the pipeline has")
    for sub in (add, listing):
        sub.add_argument(
            "--pipeline",
            help="pipeline name (default: the one pipeline of the code location; given "
            "without -f/-m, nothing is loaded)",
        )
        where = sub.add_mutually_exclusive_group()
        where.add_argument(
            "-f",
            "--python-file",
            help="the code location's Python file, as for `dagster dev -f` "
            "(default: the project of the nearest pyproject.toml with [tool.dg] or "
            "[tool.dagster])",
        )
        where.add_argument(
            "-m", "--module-name", help="the code location's module, as for `dagster dev -m`"
        )

    reuse = commands.add_parser("reuse", help="maintain the index of earlier requests")
    reuse_actions = reuse.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = reuse_actions.add_parser(
        "rebuild",
        help="drop the reuse index and derive it again from the record tables "
        "(while no run is writing)",
    )
    _add_base(rebuild)
    rebuild.add_argument(
        "--asset",
        action="append",
        help="an asset's table folder name, e.g. product_images__product_cutouts "
        "(repeatable; default: every asset with tables)",
    )

    demo = commands.add_parser("demo", help="run the offline demo pipeline end to end")
    _add_base(demo)
    return parser


def _add_base(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default="bria_data",
        help="store location: a folder or fsspec URL holding images/ and tables/ "
        "(default: ./bria_data)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already explained
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "demo":
            return _demo(args.base)
        if args.command == "batches":
            return _batches(args, sys.stdout)
        if args.command == "reuse":
            return _reuse(args, sys.stdout)
        return _lineage(args, sys.stdout)
    except BriaError as exc:
        return _error(str(exc))
    except BrokenPipeError:  # `... | head` closed the pipe: not an error worth a traceback
        return 0


def _error(message: str) -> int:
    """Say what went wrong on stderr, in one line; returns the usage exit status."""
    print(f"bria-dagster: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _note(message: str) -> None:
    """A remark beside the output, on stderr (stdout stays the answer)."""
    print(f"bria-dagster: note: {message}", file=sys.stderr)


def _demo(base: str) -> int:
    try:
        from . import demo
    except ImportError as exc:
        missing = "module bria_dagster.cli.demo is missing" if exc.name == DEMO_MODULE else exc
        return _error(
            f"the demo cannot start ({missing}); reinstall bria-dagster with its dependencies"
        )
    result = demo.main(base=base)
    return result if isinstance(result, int) else 0


def _batches(args: argparse.Namespace, out: TextIO) -> int:
    from ..orchestration import batches

    batches.dagster_home()  # before loading any code: without it nothing can be done
    pipeline = batches.choose_pipeline(
        args.pipeline, python_file=args.python_file, module_name=args.module_name
    )
    if args.action == "list":
        for name in batches.list_batches(pipeline):
            out.write(f"{name}\n")
        return 0
    done = batches.add_batches(pipeline, args.batch, catalog_dir=args.catalog_dir)
    where = f"pipeline {pipeline.name} (partitions {pipeline.partitions})"
    for name in done.added:
        out.write(f"added {name} to {where}\n")
    for name in done.known:
        out.write(f"already there: {name} in {where}\n")
    if done.added and done.checked_in is None:
        _note(
            f"catalog files not checked (pipeline {pipeline.name} named without its code "
            "location): give --catalog-dir DIR, or -f FILE / -m MODULE"
        )
    return 0


def _reuse(args: argparse.Namespace, out: TextIO) -> int:
    from ..records.reuse import rebuild

    for asset, tables in rebuild(args.base, args.asset).items():
        out.write(f"{asset}: {tables} table(s) indexed\n")
    return 0


def _report(args: argparse.Namespace, out: TextIO) -> int:
    from ..lineage.report import write_audit_report

    if args.thumbnail_px < 16:
        return _error("--thumbnail-px must be at least 16")
    report = write_audit_report(
        args.base, args.batch, args.out, pipeline=args.pipeline, thumbnail_px=args.thumbnail_px
    )
    done = "kept (unchanged)" if report.work.reused else "wrote"
    out.write(
        f"{done} {report.path} ({report.size_bytes:,} bytes): {report.products} products, "
        f"{report.images} images, {report.failures} failures, "
        f"cost {report.cost_usd:.4f} USD (list price {report.list_price_usd:.4f} USD)\n"
    )
    if report.missing_images:
        _note(
            f"{report.missing_images} image(s) named by the tables are missing from the "
            "store (marked in the report)"
        )
    return 0


def _lineage(args: argparse.Namespace, out: TextIO) -> int:
    if args.query == "report":
        return _report(args, out)
    from .lineage import run  # the SQLite index only: no pandas/pyarrow while it is current

    return run(args, out, _note)


if __name__ == "__main__":
    raise SystemExit(main())
