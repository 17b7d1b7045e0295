"""The audit report's page: one self-contained HTML document, written as a stream.

Sections: a header (batch, pipeline, storage, totals), every failure (root causes first,
then the rows not made because an earlier step failed), the cost per step, the runs, and
per sku its chain as nested cards. The CSS (``report.css``, package data) is inline and
every text from the tables is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from importlib.resources import files
from typing import Any

from ..._version import __version__
from ...records.schema import FAILED, OK, UPSTREAM_FAILED
from .cache import Piece, ReportParts, Thumb
from .model import AuditReport, ProductChain, ReportBatch, ReportWork
from .thumbnails import Thumbnails

CHUNK_SKUS = 64
"""Products whose thumbnails are made (in parallel) and written before the next ones."""
THUMBNAIL_WORKERS = 8
OPEN_SKUS = 20
"""Batches of at most this many products show every product opened."""
OPEN_CASCADES = 20
"""Up to this many rows failed only because an earlier step had are listed opened."""
SHA_SHOWN = 12


@dataclass(frozen=True)
class Rendered:
    """What drawing a page took, and the parts to cache for the next one."""

    totals: AuditReport
    """The batch's totals (where the page is written is not known here)."""
    parts: ReportParts
    """Exactly the sections and thumbnails of this page (stale ones dropped)."""
    missing: int
    """Images the store could not give back (shown as missing)."""
    work: ReportWork
    """Sections drawn and cached, thumbnails made and cached."""


def render_page(
    data: ReportBatch, write: Callable[[str], Any], thumbnail_px: int, cached: ReportParts
) -> Rendered:
    """Write the page of ``data`` through ``write``, taking what it can from ``cached``
    (sections whose rows are unchanged, thumbnails by sha256)."""
    return _Page(data).render(write, thumbnail_px, cached)


class _Page:
    """The sections of one batch's page, each a string (products a chunk at a time)."""

    def __init__(self, data: ReportBatch) -> None:
        self.data = data
        self.rows = data.rows
        self.products = data.products
        self.rank = data.rank
        self.steps = data.steps
        self.assets = data.assets

    def render(
        self, write: Callable[[str], Any], thumbnail_px: int, cached: ReportParts
    ) -> Rendered:
        """Write the page through ``write``, products :data:`CHUNK_SKUS` at a time."""
        totals = self.data.summary(path=None, url=None, size_bytes=0)
        write(_page_head(f"Audit report: batch {self.data.batch} ({self.data.pipeline})"))
        write(self._header(totals))
        write(self._failures_section(totals))
        write(self._costs_section(totals))
        write(self._runs_section())
        write(f'<section id="products"><h2>Products ({totals.products})</h2>\n')
        opened = totals.products <= OPEN_SKUS
        if not opened:
            write(
                '<p class="note">Each product is folded: open it to see its chain. '
                "Products with a failure are marked "
                '<span class="badge failed">failed</span>.</p>\n'
            )
        drawing = _Drawing(cached, Thumbnails(thumbnail_px))
        with ThreadPoolExecutor(max_workers=THUMBNAIL_WORKERS) as pool:
            for start in range(0, len(self.products), CHUNK_SKUS):
                chunk = self.products[start : start + CHUNK_SKUS]
                sections = [
                    drawing.section(
                        self._section_key(n, product, opened),
                        partial(self._product, n, product, opened),
                    )
                    for n, product in enumerate(chunk, start)
                ]
                rows = [[self.rows[i] for i in product.rows] for product in chunk]
                wanted = {
                    self.rows[i]["image_sha256"]: self.rows[i]
                    for product in chunk
                    for i in product.rows
                    if self.data.has_image(i)
                }
                drawing.thumbnails(wanted, pool)
                write("".join(map(drawing.html, sections, rows)))
        write("</section>\n")
        kept = drawing.kept
        write(
            f"<footer>Written by bria-dagster {_e(__version__)} from the step tables under "
            f"<code>{_e(self.data.base.rstrip('/'))}/tables</code>; "
            f"{len(kept.thumbnails)} thumbnail(s), {len(drawing.missing)} image(s) missing."
            "</footer>\n</body>\n</html>\n"
        )
        work = ReportWork(**drawing.counts)
        return Rendered(totals=totals, parts=kept, missing=len(drawing.missing), work=work)

    def _section_key(self, n: int, product: ProductChain, opened: bool) -> str:
        """What a product's section is drawn from: its rows, its place, the steps' order.

        A row's ``reused_in_run_id`` counts only as set or not: every run that reuses an
        unchanged product's rows stamps its own id on them, and the section keeps that id
        as a slot (filled in by :meth:`_Drawing.html`), so it is not drawn again for it.
        """
        first = self.rows[product.rows[0]]
        reused_in = list(first).index("reused_in_run_id")
        rows = []
        for i in product.rows:  # every row has the same columns, in the same order
            values = list(self.rows[i].values())
            values[reused_in] = bool(values[reused_in])
            rows.append(values)
        text = repr((n, opened, self.assets, list(first), rows))
        return hashlib.sha256(text.encode()).hexdigest()

    def _header(self, totals: AuditReport) -> str:
        failures = "failed" if totals.failures else "ok"
        generated = self.data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        boxes = [
            ("products", str(totals.products), ""),
            ("images", str(totals.images), ""),
            ("failures", str(totals.failures), failures),
            ("failed products", str(totals.failed_products), failures),
            ("cost_usd (paid)", _usd(totals.cost_usd), ""),
            ("list price", _usd(totals.list_price_usd), ""),
        ]
        return (
            f"<header><h1>Audit report: batch <code>{_e(self.data.batch)}</code></h1>\n"
            '<dl class="meta">'
            f"<dt>batch</dt><dd><code>{_e(self.data.batch)}</code></dd>"
            f"<dt>pipeline</dt><dd><code>{_e(self.data.pipeline)}</code></dd>"
            f"<dt>storage</dt><dd><code>{_e(self.data.base)}</code></dd>"
            f"<dt>generated at</dt><dd>{_e(generated)}</dd>"
            f"<dt>steps</dt><dd>{_e(' → '.join(self.assets))}</dd>"
            "</dl>\n"
            '<div class="totals">'
            + "".join(
                f'<div class="total {cls}" data-total="{_e(label)}">'
                f'<span class="value">{_e(value)}</span><span class="label">{_e(label)}</span>'
                "</div>"
                for label, value, cls in boxes
            )
            + "</div>\n"
            '<p class="note">cost_usd is what the runs paid (0 for reused rows and on the '
            "local engine); list price is every image of the batch at the list price it was "
            "made at (unit_price_usd).</p>\n"
            '<nav><a href="#failures">failures</a> · <a href="#costs">cost per step</a> · '
            '<a href="#runs">runs</a> · <a href="#products">products</a></nav>'
            "</header>\n"
        )

    def _failures_section(self, totals: AuditReport) -> str:
        failed = [i for i in range(len(self.rows)) if self.data.failed(i)]
        if not failed:
            return '<section id="failures"><h2>Failures (0)</h2><p>No row failed.</p></section>\n'
        sku_anchor = {p.sku: n for n, p in enumerate(self.products)}
        order = {i: n for n, p in enumerate(self.products) for i in p.rows}

        def key(i: int) -> tuple[int, int, int]:
            return (self.rank.get(self.rows[i]["_asset"], 0), order.get(i, 0), i)

        causes = sorted((i for i in failed if not self._cascade(i)), key=key)
        cascades = sorted((i for i in failed if self._cascade(i)), key=key)
        by_class = Counter(self.rows[i]["error_class"] or "error" for i in failed)
        parts = [
            f'<section id="failures" class="alert"><h2>Failures ({len(failed)})</h2>\n<p>',
            ", ".join(f"{_e(name)}: {count}" for name, count in by_class.most_common()),
            f" — in {totals.failed_products} product(s).</p>\n",
        ]
        if causes:
            parts.append(self._failure_table(causes, sku_anchor))
        if cascades:
            opened = " open" if len(cascades) <= OPEN_CASCADES else ""
            parts.append(
                f"<details{opened}><summary>{len(cascades)} row(s) not made because an earlier "
                f"step failed for the sku ({UPSTREAM_FAILED})</summary>\n"
            )
            parts.append(self._failure_table(cascades, sku_anchor))
            parts.append("</details>\n")
        parts.append("</section>\n")
        return "".join(parts)

    def _cascade(self, i: int) -> bool:
        return self.rows[i]["error_class"] == UPSTREAM_FAILED

    def _failure_table(self, indices: list[int], anchors: Mapping[str, int]) -> str:
        lines = [
            '<table class="failures"><thead><tr><th>sku</th><th>step</th><th>variant</th>'
            "<th>error_class</th><th>error_message</th><th>run</th></tr></thead><tbody>\n"
        ]
        for i in indices:
            row = self.rows[i]
            sku = str(row["sku"])
            lines.append(
                f'<tr class="failure" data-sku="{_e(sku)}" data-step="{_e(row["step"])}">'
                f'<td><a href="#sku-{anchors[sku]}">{_e(sku)}</a></td>'
                f"<td>{_e(row['step'])}<br><small>{_e(row['_asset'])}</small></td>"
                f"<td>{_e(row['variant'])}</td>"
                f'<td class="error-class">{_e(row["error_class"] or "error")}</td>'
                f'<td><pre class="error-message">{_e(row["error_message"] or "(no message)")}'
                "</pre></td>"
                f"<td><code>{_e(row['run_id'])}</code></td></tr>\n"
            )
        lines.append("</tbody></table>\n")
        return "".join(lines)

    def _costs_section(self, totals: AuditReport) -> str:
        head = (
            "<tr><th>step</th><th>asset</th><th>rows</th><th>ok</th><th>not sent</th>"
            "<th>reused</th><th>failed</th><th>backend calls</th><th>cost_usd</th>"
            "<th>list price</th>"
            "<th>unit price</th><th>backend</th><th>endpoint</th></tr>"
        )
        body = []
        for s in self.steps:
            unit = " / ".join(_price(p) for p in s.unit_prices_usd) or "—"
            bad = ' class="bad"' if s.failed else ""
            body.append(
                f'<tr data-asset="{_e(s.asset)}" data-step="{_e(s.step)}">'
                f"<td>{_e(s.step)}</td><td>{_e(s.asset)}</td><td>{s.rows}</td><td>{s.ok}</td>"
                f'<td class="noop">{s.noop}</td><td>{s.reused}</td><td{bad}>{s.failed}</td>'
                f"<td>{s.backend_calls if s.endpoints or s.backend_calls else '—'}</td>"
                f'<td class="num" data-cost="{s.cost_usd:.6f}">{_usd(s.cost_usd)}</td>'
                f'<td class="num">{_usd(s.list_price_usd)}</td><td class="num">{_e(unit)}</td>'
                f"<td>{_e(', '.join(s.backends)) or '—'}</td>"
                f"<td>{_e(', '.join(s.endpoints)) or '—'}</td></tr>\n"
            )
        calls = sum(s.backend_calls for s in self.steps)
        body.append(
            '<tr class="sum"><td>total</td><td></td>'
            f"<td>{sum(s.rows for s in self.steps)}</td><td>{sum(s.ok for s in self.steps)}</td>"
            f"<td>{sum(s.noop for s in self.steps)}</td>"
            f"<td>{sum(s.reused for s in self.steps)}</td><td>{totals.failures}</td>"
            f"<td>{calls}</td>"
            f'<td class="num" data-cost="{totals.cost_usd:.6f}">{_usd(totals.cost_usd)}</td>'
            f'<td class="num">{_usd(totals.list_price_usd)}</td><td></td><td></td><td></td></tr>\n'
        )
        return (
            '<section id="costs"><h2>Cost per step</h2>\n'
            f'<table class="costs"><thead>{head}</thead><tbody>\n{"".join(body)}</tbody></table>'
            '<p class="note">ok: made by the run in <code>run_id</code>; not sent: ok rows '
            "whose request would have returned its input unchanged (an expansion to the ratio "
            "the image already has), recorded with the reason and not paid; reused: "
            "answered from an earlier record without a call (nothing paid); backend calls: "
            "distinct request ids of the ok rows.</p></section>\n"
        )

    def _runs_section(self) -> str:
        made: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        paid: Counter[str] = Counter()
        reused_from: Counter[str] = Counter()
        reused_in: Counter[str] = Counter()
        first_seen: dict[str, datetime] = {}
        for row in self.rows:
            run = str(row["run_id"])
            if row["status"] == OK:
                made[run] += 1
                paid[run] += row["cost_usd"] or 0.0
            elif row["status"] == FAILED:
                failed[run] += 1
            else:  # a reused row still names the run that made its image
                made[run] += 1
                reused_from[run] += 1
                if row["reused_in_run_id"]:
                    reused_in[str(row["reused_in_run_id"])] += 1
            created = row["created_at"]
            if created is not None and (run not in first_seen or created < first_seen[run]):
                first_seen[run] = created
        runs = sorted(
            {*made, *failed, *reused_from, *reused_in},
            key=lambda r: (first_seen.get(r) or datetime.max.replace(tzinfo=UTC), r),
        )
        body = "".join(
            f'<tr data-run="{_e(run)}"><td><code>{_e(run)}</code></td>'
            f"<td>{_e(_time(first_seen.get(run)))}</td><td>{made[run]}</td><td>{failed[run]}</td>"
            f"<td>{reused_from[run]}</td><td>{reused_in[run]}</td>"
            f'<td class="num">{_usd(paid[run])}</td></tr>\n'
            for run in runs
        )
        return (
            '<section id="runs"><h2>Runs</h2>\n<table class="runs"><thead><tr><th>run_id</th>'
            "<th>earliest row</th><th>rows made</th><th>rows failed</th>"
            "<th>its images reused here</th><th>rows it reused</th><th>cost_usd</th></tr>"
            f"</thead><tbody>\n{body}</tbody></table>\n"
            '<p class="note">rows made: rows whose image the run made (their '
            "<code>run_id</code>), including those a later run now shows as reused (its "
            "images reused here); rows it reused: rows it answered from earlier records "
            "(their <code>reused_in_run_id</code>); cost_usd: paid on the rows still shown "
            "as made by a call (a reused row costs 0).</p></section>\n"
        )

    def _product(self, n: int, product: ProductChain, opened: bool) -> list[Piece]:
        """The product's section, with slots for its pictures and reusing runs (see
        :meth:`_Drawing.html`)."""
        rows = [self.rows[i] for i in product.rows]
        failed = sum(1 for row in rows if row["status"] == FAILED)
        images = sum(1 for i in product.rows if self.data.has_image(i))
        cost = sum(row["cost_usd"] or 0.0 for row in rows)
        flag = f' <span class="badge failed">{failed} failed</span>' if failed else ""
        out: list[Piece] = [
            f'<details class="sku{" has-failure" if failed else ""}" id="sku-{n}" '
            f'data-sku="{_e(product.sku)}"{" open" if opened else ""}><summary>'
            f'<span class="sku-name">{_e(product.sku)}</span> <small>{images} image(s), '
            f'cost_usd {_usd(cost)}</small>{flag}</summary>\n<div class="chain">\n'
        ]
        seen: set[int] = set()
        for root in product.roots:
            self._node(root, product, seen, out)
        out.append("</div></details>\n")
        return _joined(out)

    def _node(self, root: int, product: ProductChain, seen: set[int], out: list[Piece]) -> None:
        """``root`` and its descendants as nested flex boxes (iterative: no recursion limit)."""
        stack: list[int | None] = [root]  # None closes a node
        while stack:
            i = stack.pop()
            if i is None:
                out.append("</div></div>\n")
                continue
            if i in seen:
                continue
            seen.add(i)
            out.append('<div class="node">')
            out.extend(self._card(i, product))
            out.append('<div class="kids">')
            stack.append(None)
            stack.extend(reversed(product.children.get(i, [])))

    def _card(self, i: int, product: ProductChain) -> list[Piece]:
        row = self.rows[i]
        status = str(row["status"])
        sha = row["image_sha256"]
        picture: Piece
        if self.data.has_image(i):
            picture = {"image": sha, "alt": f"{product.sku} {row['step']} {row['variant']}"}
        else:
            picture = f'<div class="noimg">{"not made" if status == FAILED else "no image"}</div>'
        facts: list[tuple[str, Piece]] = []
        if sha:
            size = f" {row['width']}×{row['height']}" if row["width"] else ""
            facts.append(
                (
                    "image",
                    f'<code title="{_e(sha)}">{_e(sha[:SHA_SHOWN])}</code>{_e(size)} '
                    f"{_e(row['content_type'] or '')}",
                )
            )
        parent = row["parent_sha256"]
        root = i in product.roots
        if parent and root:  # its parent image is in no row of this sku here
            short = f'<code title="{_e(parent)}">{_e(parent[:SHA_SHOWN])}</code>'
            facts.append(("parent", f"{short} (not in this batch)"))
        if (row["step"] == "source" or root) and row["root_source_uri"]:
            facts.append(("source", f'<span class="uri">{_e(row["root_source_uri"])}</span>'))
        params = _parameters(row["parameters"])
        if params:
            facts.append(("params", params))
        if row["backend"] or row["endpoint_id"]:
            made_by = (str(v) for v in (row["backend"], row["endpoint_id"]) if v)
            facts.append(("backend", _e(" · ".join(made_by))))
        if row["noop_reason"]:
            facts.append(("not sent", f'<span class="noop-reason">{_e(row["noop_reason"])}</span>'))
        if row["request_id"]:
            facts.append(("request", f'<code class="request-id">{_e(row["request_id"])}</code>'))
        if row["seed"] is not None:
            facts.append(("seed", _e(row["seed"])))
        cost = f'<span class="cost">{_usd(row["cost_usd"] or 0.0)}</span>'
        if row["unit_price_usd"]:
            cost += f" (list {_price(row['unit_price_usd'])})"
        facts.append(("cost_usd", cost))
        facts.append(("run", f'<code class="run-id">{_e(row["run_id"])}</code>'))
        if row["reused_in_run_id"]:  # the run that last reused it: a slot, see _section_key
            facts.append(("reused in", {"reused_in": product.rows.index(i)}))
        made = _time(row["created_at"])
        if row["attempts"]:
            made += f", {row['attempts']} attempt(s), {row['duration_s'] or 0:.2f} s"
        facts.append(("made" if status != FAILED else "at", _e(made)))
        error = ""
        if status == FAILED:
            error = (
                f'<div class="error"><b class="error-class">{_e(row["error_class"] or "error")}'
                f'</b><pre class="error-message">{_e(row["error_message"] or "(no message)")}'
                "</pre></div>"
            )
        return [
            f'<div class="card {_e(status)}" data-step="{_e(row["step"])}" '
            f'data-asset="{_e(row["_asset"])}" data-status="{_e(status)}">'
            '<div class="thumb">',
            picture,
            '</div><div class="info">'
            f'<div class="title"><b>{_e(row["step"])}</b> <small>{_e(row["_asset"])}</small> '
            f'<span class="badge {_e(status)}">{_e(status)}</span></div>'
            f'<div class="variant">{_e(row["variant"])}</div><dl>',
            *(p for k, v in facts for p in (f"<dt>{_e(k)}</dt><dd>", v, "</dd>")),
            f"</dl>{error}</div></div>",
        ]


class _Drawing:
    """The page's products drawn from ``cached`` where they can be, counted, and the parts
    kept for the next page (only those this page shows)."""

    def __init__(self, cached: ReportParts, maker: Thumbnails) -> None:
        self.cached = cached
        self.maker = maker
        self.kept = ReportParts(cached.renderer)
        self.missing: set[str] = set()
        self.counts: Counter[str] = Counter(
            sections_rendered=0, sections_cached=0, thumbnails_made=0, thumbnails_cached=0
        )

    def section(self, key: str, draw: Callable[[], list[Piece]]) -> list[Piece]:
        pieces = self.cached.sections.get(key)
        if pieces is None:
            pieces = draw()
            self.counts["sections_rendered"] += 1
        else:
            self.counts["sections_cached"] += 1
        self.kept.sections[key] = pieces
        return pieces

    def thumbnails(self, wanted: Mapping[str, Mapping[str, Any]], pool: ThreadPoolExecutor) -> None:
        """Keep the thumbnail of every image in ``wanted`` (sha256 -> a row naming it):
        from the cache, or made in ``pool``."""
        to_make = {}
        for sha, row in wanted.items():
            if sha in self.kept.thumbnails or sha in self.missing:
                continue
            if sha in self.cached.thumbnails:
                self.kept.thumbnails[sha] = self.cached.thumbnails[sha]
                self.counts["thumbnails_cached"] += 1
            else:
                to_make[sha] = row
        for sha, thumb in self.maker.make(to_make, pool).items():
            if thumb is None:
                self.missing.add(sha)
            else:
                self.kept.thumbnails[sha] = thumb
                self.counts["thumbnails_made"] += 1

    def html(self, pieces: list[Piece], rows: list[dict[str, Any]]) -> str:
        """A section's HTML, its slots filled: an image as its thumbnail (or as missing),
        a reusing run from the product's ``rows``."""
        thumbs = self.kept.thumbnails
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif "image" in piece:
                out.append(_picture(thumbs.get(piece["image"]), piece["image"], piece["alt"]))
            else:
                run = rows[piece["reused_in"]]["reused_in_run_id"]
                out.append(f'<code class="reused-in">{_e(run)}</code>')
        return "".join(out)


def _joined(pieces: list[Piece]) -> list[Piece]:
    """``pieces`` with each run of HTML joined into one string."""
    out: list[Piece] = []
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        if text:
            out.append("".join(text))
            text = []
        out.append(piece)
    if text:
        out.append("".join(text))
    return out


def _picture(thumb: Thumb | None, sha: str, alt: str) -> str:
    if thumb is None:
        return '<div class="noimg missing">image missing from the store</div>'
    uri, width, height, alpha = thumb
    css = ' class="alpha"' if alpha else ""
    return (
        f'<img{css} src="{uri}" width="{width}" height="{height}" alt="{_e(alt)}" '
        f'data-sha256="{_e(sha)}">'
    )


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _usd(value: float) -> str:
    return f"{value:.4f}"


def _price(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _parameters(text: str | None) -> str:
    """``{"aspect_ratio": "4:5", "seed": 3}`` as ``aspect_ratio=4:5 seed=3``, every value whole."""
    if not text:
        return ""
    try:
        params = json.loads(text)
    except ValueError:
        return f"<code>{_e(text)}</code>"
    if not isinstance(params, dict):
        return f"<code>{_e(text)}</code>"
    parts = []
    for key, value in params.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f'<span class="param"><b>{_e(key)}</b>={_e(shown)}</span>')
    return " ".join(parts)


def _page_head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>\n{_css()}</style>\n</head>\n<body>\n"
    )


@cache
def _css() -> str:
    return files(__package__).joinpath("report.css").read_text(encoding="utf-8")
