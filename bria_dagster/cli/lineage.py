"""``bria-dagster lineage trace|derived``: the query, and its answer as a table, JSON or CSV.

Imports only the SQLite index (:mod:`bria_dagster.lineage.index`): while the index is
current no pandas or pyarrow is loaded, so an answer over a million records comes in
well under a second, interpreter start included.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..errors import IndexUnavailableError
from ..lineage.index import LineageIndex, QueryResult, open_index

__all__ = ["dump_json", "run", "write_csv"]

# Columns shown by the table format, with their headings: the rest are in json/csv.
# run_id names the run that made a row's image; a reused row also names the run that
# reused it (and paid nothing for it).
TRACE_TABLE = (
    ("hop", "hop"),
    ("step", "step"),
    ("sku", "sku"),
    ("image_sha256", "image"),
    ("endpoint_id", "endpoint"),
    ("backend", "backend"),
    ("parameters", "parameters"),
    ("seed", "seed"),
    ("run_id", "made_in_run"),
    ("reused_in_run_id", "reused_in_run"),
    ("partition", "partition"),
    ("cost_usd", "cost_usd"),
)
DERIVED_TABLE = (
    ("step", "step"),
    ("sku", "sku"),
    ("variant", "variant"),
    ("status", "status"),
    ("image_sha256", "image"),
    ("parent_sha256", "parent"),
    ("endpoint_id", "endpoint"),
    ("parameters", "parameters"),
    ("run_id", "made_in_run"),
    ("reused_in_run_id", "reused_in_run"),
    ("cost_usd", "cost_usd"),
    ("error_message", "error"),
)
SHA_WIDTH = 12
PARAM_VALUE_WIDTH = 24
PARAMS_WIDTH = 60


def run(args: argparse.Namespace, out: TextIO, note: Callable[[str], None]) -> int:
    """``lineage trace`` / ``lineage derived``: the answer of the base's cached index, or,
    when it cannot be used (``--no-index``, a read-only store, a failure mid-query), of
    an index of the tables built in memory; the same rows either way. ``note`` says on
    stderr why the tables were read instead."""
    if not args.no_index:
        # A local base's index is beside its tables, an fsspec URL's in the local cache.
        try:
            index = open_index(args.base, cache_dir=args.cache_dir)
        except IndexUnavailableError as exc:
            note(f"{exc}; reading the tables instead")
        else:
            answer = io.StringIO()  # written out only once the index has answered whole
            try:
                with index:
                    status = _answer(args, index, answer)
            except sqlite3.Error as exc:  # e.g. disk I/O error, locked past the timeout
                note(
                    f"the lineage index failed during the query ({exc}); reading the tables instead"
                )
                return _from_tables(args, out)
            out.write(answer.getvalue())
            if index.stats.changed:
                print(index.stats.summary(), file=sys.stderr)
            return status
    return _from_tables(args, out)


def _from_tables(args: argparse.Namespace, out: TextIO) -> int:
    """The query over an index of the tables built in memory (no cache file written)."""
    with open_index(args.base, persist=False) as index:
        return _answer(args, index, out)


def _answer(args: argparse.Namespace, index: LineageIndex, out: TextIO) -> int:
    if args.query == "trace":
        result = index.trace(args.image, all_records=args.all_records)
    else:
        result = index.derived(args.source, include_failed=args.include_failed)
    if args.format == "json":
        dump_json(result, out)
    elif args.format == "csv":
        write_csv(result, out)
    else:
        _write_table(args, result.rows, result.source_uri, out)
    _report_cost(args, result.total_cost_usd, out)
    return 0


def _write_table(
    args: argparse.Namespace, rows: list[dict[str, Any]], source_uri: str | None, out: TextIO
) -> None:
    """The ``table`` format, the same from either path: title, columns, source, total."""
    if args.query == "trace":
        out.write(f"lineage of {rows[0]['image_sha256']} ({len(rows)} rows)\n")
        out.write(_render_table(rows, TRACE_TABLE))
        out.write(f"source: {source_uri}\n")
    else:
        out.write(f"images derived from {args.source} ({len(rows)} rows)\n")
        out.write(_render_table(rows, DERIVED_TABLE))


def _report_cost(args: argparse.Namespace, cost: float, out: TextIO) -> None:
    """The total: the table's last line, or on stderr beside json/csv (stdout stays data)."""
    if args.format == "table":
        out.write(f"total cost: {cost:.4f} USD\n")
    else:
        print(f"total cost: {cost:.4f} USD", file=sys.stderr)


def _render_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Aligned plain-text columns; shas shortened, parameters shown as key=value."""
    shown = [[_cell(name, row.get(name)) for name, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [max([len(h), *(len(r[i]) for r in shown)]) for i, h in enumerate(headings)]
    lines = [headings, ["-" * w for w in widths], *shown]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def _cell(name: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if name.endswith("sha256"):
        return str(value)[:SHA_WIDTH]
    if name == "cost_usd":
        return f"{float(value):.4f}"
    if name == "parameters":
        return _compact_parameters(str(value))
    text = str(value).replace("\n", " ")
    return text if len(text) <= PARAMS_WIDTH else text[: PARAMS_WIDTH - 3] + "..."


def _compact_parameters(text: str) -> str:
    """``{"prompt": "a long prompt", "seed": 3}`` -> ``prompt='a long pr...' seed=3``."""
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if not isinstance(params, dict):
        return text[:PARAMS_WIDTH]
    parts = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if len(shown) > PARAM_VALUE_WIDTH:
            shown = shown[: PARAM_VALUE_WIDTH - 3] + "..."
        parts.append(f"{key}={shown}")
    joined = " ".join(parts) or "-"
    return joined if len(joined) <= PARAMS_WIDTH else joined[: PARAMS_WIDTH - 3] + "..."


def write_csv(result: QueryResult, out: TextIO) -> None:
    """``result`` as CSV, byte for byte as ``DataFrame.to_csv(index=False)`` writes it."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    times = _csv_times([row.get("created_at") for row in result.rows])
    for row, time_text in zip(result.rows, times, strict=True):
        cells = [_csv_cell(row[name]) for name in result.columns]
        if "created_at" in result.columns:
            cells[result.columns.index("created_at")] = time_text
        writer.writerow(cells)


def _csv_times(values: list[str | None]) -> list[str]:
    """Times as pandas writes a datetime column: ``str(Timestamp)``, with one sub-second
    precision for the whole column (none, milliseconds or microseconds, as needed)."""
    fractions = [v[20:26] if v and v[19] == "." else "000000" for v in values]
    if any(f[3:] != "000" for f in fractions):
        digits = 6
    elif any(f != "000000" for f in fractions):
        digits = 3
    else:
        digits = 0
    return [
        f"{v[:10]} {v[11:19]}{'.' + f[:digits] if digits else ''}{v[-6:]}" if v else ""
        for v, f in zip(values, fractions, strict=True)
    ]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dump_json(result: QueryResult, out: TextIO) -> None:
    """``result`` as a JSON list of objects (the rows as the index gives them)."""
    json.dump(result.rows, out, indent=2)
    out.write("\n")
