"""The ``audit_report`` asset's metadata: a link to the batch's page and what each product became.

The page itself is written by :func:`bria_dagster.lineage.report.write_audit_report`
(Dagster-free); this module turns the :class:`~bria_dagster.lineage.report.AuditReport` it
returns into materialization metadata for the Dagster UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg

from ..lineage.report import AuditReport, ProductStep, ReportWork
from ..steps.settings import PREVIEW_ROWS
from .metadata import _text

__all__ = ["audit_report_metadata", "products_markdown"]

CELL_IMAGES = 3
"""Images named per step in a ``products`` cell (then "+N more")."""
SHA_CELL = 10
SERVE_PORT = 8000
"""The port the ``audit_report_open`` hint serves reports on."""


def audit_report_metadata(
    report: AuditReport, *, url_base: str | None = None, products: int = PREVIEW_ROWS
) -> dict[str, Any]:
    """Materialization metadata for a Dagster asset that writes the report.

    ``audit_report`` is a link (``dg.MetadataValue.url``) when the page is reachable
    over http (see :meth:`AuditReport.http_url`): the UI opens it. Otherwise it is the
    page's path, and ``audit_report_open`` says how to serve it, as browsers do not follow
    a ``file://`` link from the UI's http page. ``products`` lists what each product
    became (the first ``products`` of them, failed ones first). ``report_reused`` says
    whether the page was kept (its batch unchanged) and ``report_reason`` why it was kept
    or redrawn; a redrawn page counts its sections and thumbnails drawn and cached.
    """
    meta: dict[str, Any] = {}
    link = report.http_url(url_base)
    if link:
        meta["audit_report"] = dg.MetadataValue.url(link)
    elif report.path:
        meta["audit_report"] = dg.MetadataValue.path(report.path)
        meta["audit_report_open"] = dg.MetadataValue.md(_how_to_open(report))
    if report.product_summaries:
        meta["products"] = dg.MetadataValue.md(products_markdown(report, products))
    meta.update(
        audit_products=report.products,
        audit_images=report.images,
        audit_failures=report.failures,
        audit_cost_usd=round(report.cost_usd, 6),
        audit_list_price_usd=round(report.list_price_usd, 6),
    )
    meta.update(_work(report.work))
    return meta


def _work(work: ReportWork) -> dict[str, Any]:
    """Whether the page was kept or redrawn, why, and what the cache saved."""
    meta: dict[str, Any] = {
        "report_reused": work.reused,
        "report_reason": dg.MetadataValue.text(work.reason),
        "files_written": work.files_written,
    }
    if not work.reused:
        meta.update(
            report_sections_drawn=work.sections_rendered,
            report_sections_cached=work.sections_cached,
            report_thumbnails_made=work.thumbnails_made,
            report_thumbnails_cached=work.thumbnails_cached,
        )
    return meta


def _how_to_open(report: AuditReport) -> str:
    page = f"{quote(report.pipeline)}/{quote(report.batch)}.html"
    if report.url and report.url.startswith("file://") and report.path:
        reports = Path(report.path).parent.parent
        return (
            "Browsers do not open a `file://` link from the Dagster UI's http page: "
            "serve the reports over http, e.g.\n\n"
            f"`python -m http.server {SERVE_PORT} --bind 127.0.0.1 --directory {reports}`"
            f"\n\nthen open http://127.0.0.1:{SERVE_PORT}/{page} . Set "
            f'`PipelineSettings(report_url_base="http://127.0.0.1:{SERVE_PORT}")` '
            "(component: `report_url_base`) and `audit_report` becomes a link."
        )
    return (
        f"Serve `{report.path}`'s reports folder over http (e.g. an S3 static website) and "
        "set `PipelineSettings(report_url_base=...)` (component: `report_url_base`) to "
        f"its URL: `audit_report` then links `<report_url_base>/{page}`. Or write a "
        f"local copy: `bria-dagster lineage report --batch {report.batch} --pipeline "
        f"{report.pipeline} --base {report.storage} --out {report.batch}.html`."
    )


def products_markdown(report: AuditReport, limit: int = PREVIEW_ROWS) -> str:
    """What each product became, failed products first: per step its images (short
    sha256 and size) or its failure, and what it cost; at most ``limit`` products."""
    ordered = sorted(report.product_summaries, key=lambda p: p.failures == 0)
    shown = ordered[:limit]
    failed = sum(1 for p in report.product_summaries if p.failures)
    heading = f"**{len(shown)} of {report.products} products**"
    if failed:
        heading += f", failed products first ({failed} failed)"
    heading += ": each step's images (sha256, size); every image in `audit_report`"
    assets = [step.asset for step in report.steps]
    lines = [
        heading,
        "",
        "| sku | status | " + " | ".join(_text(a) for a in assets) + " | cost_usd |",
        "|---|---|" + "---|" * len(assets) + "---|",
    ]
    for product in shown:
        by_asset = {step.asset: step for step in product.steps}
        cells = [_product_cell(by_asset.get(asset)) for asset in assets]
        status = f"failed ({product.failures})" if product.failures else "ok"
        lines.append(
            f"| {_text(product.sku)} | {status} | {' | '.join(cells)} | {product.cost_usd:.4f} |"
        )
    if len(ordered) > limit:
        lines.append(
            f"\n{len(ordered) - limit} more products in `audit_report` "
            "(raise `preview_rows` to list them here)."
        )
    return "\n".join(lines)


def _product_cell(step: ProductStep | None) -> str:
    if step is None:
        return "—"
    parts = []
    for sha, width, height in step.images[:CELL_IMAGES]:
        size = f" {width}×{height}" if width and height else ""
        parts.append(f"`{sha[:SHA_CELL]}`{size}")
    if len(step.images) > CELL_IMAGES:
        parts.append(f"+{len(step.images) - CELL_IMAGES} more")
    if step.reused:
        parts.append(f"({step.reused} reused)")
    if step.failed:
        parts.append(f"{step.failed} failed: {_text(step.error_class or 'error')}")
    return " ".join(parts) if parts else "—"
