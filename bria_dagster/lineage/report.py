"""An audit report of one catalog batch: one self-contained HTML page a person can open.

The step tables of the batch (``<base>/tables/<pipeline>__<asset>/<batch>.parquet``,
every ``<pipeline>/*`` asset present, so a step added later appears without a change
here) are read once and shown as:

* a header: batch, pipeline, storage, when, totals (products, images, failures, paid
  ``cost_usd`` and list price) and the runs that made or reused the rows;
* every failure with its full ``error_class`` and ``error_message`` (root causes first,
  then the rows that failed because an earlier step had);
* the cost per step: rows ok / reused / failed, backend calls, ``cost_usd``, list price;
* per sku (a ``<details>`` each), the chain source -> cutout -> scene(s) ->
  expansion(s), linked by ``parent_sha256`` -> ``image_sha256``; each image with its
  thumbnail, parameters, backend, request id, cost, producing run and reusing run.

Nothing is fetched when the page opens: the CSS is inline and the thumbnails are
``data:`` URIs (JPEG, or a palette PNG over a checkerboard when the image has
transparency), made once per distinct image sha256. Every text from the tables
(SKUs, parameters, error messages) is HTML-escaped.

:func:`write_audit_report` streams the page to a temporary file and moves it into
place (any fsspec location), holding in memory the batch's record rows (not its
images) and the thumbnails of at most :data:`CHUNK_SKUS` products at a time.
:func:`render_audit_report` returns the page as a string.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from .._version import __version__
from ..errors import (
    BriaError,
    RecordTableError,
    StorageAccessError,
    storage_access,
    storage_access_error,
)
from ..records.schema import FAILED, OK, REUSED, STEP_ORDER, UPSTREAM_FAILED
from ..records.schema import NOOP_BACKEND as NOOP
from ..records.store import ImageStore
from ..records.tables import IMAGE_RECORD_SCHEMA

if TYPE_CHECKING:
    from ..records.storage import PipelineStorage

__all__ = [
    "AuditReport",
    "ProductStep",
    "ProductSummary",
    "StepSummary",
    "UnknownBatchError",
    "audit_batches",
    "default_report_path",
    "render_audit_report",
    "write_audit_report",
]

DEFAULT_PIPELINE = "product_images"
THUMBNAIL_PX = 160
CHUNK_SKUS = 64
"""Products whose thumbnails are made (in parallel) and written before the next ones."""
THUMBNAIL_WORKERS = 8
OPEN_SKUS = 20
"""Batches of at most this many products show every product opened."""
OPEN_CASCADES = 20
"""Up to this many rows failed only because an earlier step had are listed opened."""
JPEG_QUALITY = 75
SHA_SHOWN = 12
_READ_COLUMNS = (
    "partition",
    "sku",
    "step",
    "variant",
    "status",
    "error_class",
    "error_message",
    "image_uri",
    "image_sha256",
    "width",
    "height",
    "content_type",
    "parent_sha256",
    "root_source_uri",
    "endpoint_id",
    "backend",
    "parameters",
    "seed",
    "request_id",
    "noop_reason",
    "cost_usd",
    "unit_price_usd",
    "duration_s",
    "attempts",
    "run_id",
    "reused_in_run_id",
    "code_version",
    "created_at",
)
_BATCHES_NAMED = 20
PRODUCTS_SHOWN = 50
"""Products in the ``products`` metadata by default (``PipelineSettings.preview_rows``)."""
CELL_IMAGES = 3
"""Images named per step in a ``products`` cell (then "+N more")."""
SHA_CELL = 10
SERVE_PORT = 8000
"""The port the ``audit_report_open`` hint serves reports on."""


class UnknownBatchError(BriaError, LookupError):
    """The storage holds no step table of this batch for this pipeline."""

    def __init__(self, message: str, *, batch: str, known: list[str]) -> None:
        super().__init__(message)
        self.batch = batch
        self.known = known


@dataclass(frozen=True)
class StepSummary:
    """One step table of the batch: what its rows are and what they cost."""

    asset: str
    """The asset's name under the pipeline (``product_cutouts``): its table folder without
    the ``<pipeline>__`` prefix."""
    step: str
    """The ``step`` value(s) of its rows (``remove``; several joined by ``/``)."""
    rows: int
    ok: int
    reused: int
    failed: int
    backend_calls: int
    """Distinct request ids of the rows made by a call (``ok``): the calls paid for."""
    cost_usd: float
    """Paid (``cost_usd`` summed; 0 for reused rows and on the local engine)."""
    list_price_usd: float
    """Every made or reused image at the list price it was made at (``unit_price_usd``)."""
    unit_prices_usd: tuple[float, ...]
    backends: tuple[str, ...]
    endpoints: tuple[str, ...]
    noop: int = 0
    """Of the ``ok`` rows, those recorded without a call (backend ``noop``): the request
    would have returned its input unchanged, so it was not sent (nothing paid)."""


@dataclass(frozen=True)
class ProductStep:
    """What one step made of one product: its images, reused ones and failures."""

    asset: str
    images: tuple[tuple[str, int | None, int | None], ...]
    """``(image_sha256, width, height)`` of each ok or reused row, in variant order."""
    reused: int
    failed: int
    error_class: str | None
    """The first failed row's ``error_class``."""


@dataclass(frozen=True)
class ProductSummary:
    """What one sku of the batch became, step by step (in the order of ``steps``)."""

    sku: str
    images: int
    failures: int
    cost_usd: float
    steps: tuple[ProductStep, ...]


@dataclass(frozen=True)
class AuditReport:
    """What :func:`write_audit_report` wrote, and the batch's totals."""

    path: str | None
    """Where the page is (a local path or an fsspec URL); ``None`` when only rendered."""
    url: str | None
    """``file:///...`` for a local page, else the fsspec URL (``s3://...``)."""
    batch: str
    pipeline: str
    storage: str
    products: int
    """Distinct SKUs in the batch's tables."""
    images: int
    """Rows with an image (ok or reused), every step, sources included."""
    failures: int
    """Failed rows, every step (those after a failed step included)."""
    failed_products: int
    cost_usd: float
    list_price_usd: float
    missing_images: int
    """Images the tables name that the store could not give back (shown as missing)."""
    steps: tuple[StepSummary, ...]
    size_bytes: int
    product_summaries: tuple[ProductSummary, ...] = ()
    """Every product of the batch, in the page's order."""

    def http_url(self, url_base: str | None) -> str | None:
        """Where the page is over http: ``url`` when it is already, else
        ``<url_base>/<pipeline>/<batch>.html`` when ``url_base`` serves ``<base>/reports``
        (the page's default place); ``None`` when neither."""
        if self.url and self.url.startswith(("http://", "https://")):
            return self.url
        if url_base:
            return f"{url_base.rstrip('/')}/{quote(self.pipeline)}/{quote(self.batch)}.html"
        return None

    def metadata(
        self, *, url_base: str | None = None, products: int = PRODUCTS_SHOWN
    ) -> dict[str, Any]:
        """Materialization metadata for a Dagster asset that writes the report.

        ``audit_report`` is a link (``dg.MetadataValue.url``) when the page is reachable
        over http (see :meth:`http_url`): the UI opens it. Otherwise it is the page's path,
        and ``audit_report_open`` says how to serve it, as browsers do not follow a
        ``file://`` link from the UI's http page. ``products`` lists what each product
        became (the first ``products`` of them, failed ones first).
        """
        import dagster as dg

        meta: dict[str, Any] = {}
        link = self.http_url(url_base)
        if link:
            meta["audit_report"] = dg.MetadataValue.url(link)
        elif self.path:
            meta["audit_report"] = dg.MetadataValue.path(self.path)
            meta["audit_report_open"] = dg.MetadataValue.md(self._how_to_open())
        if self.product_summaries:
            meta["products"] = dg.MetadataValue.md(self.products_markdown(products))
        meta.update(
            audit_products=self.products,
            audit_images=self.images,
            audit_failures=self.failures,
            audit_cost_usd=round(self.cost_usd, 6),
            audit_list_price_usd=round(self.list_price_usd, 6),
        )
        return meta

    def _how_to_open(self) -> str:
        page = f"{quote(self.pipeline)}/{quote(self.batch)}.html"
        if self.url and self.url.startswith("file://") and self.path:
            reports = Path(self.path).parent.parent
            return (
                "Browsers do not open a `file://` link from the Dagster UI's http page: "
                "serve the reports over http, e.g.\n\n"
                f"`python -m http.server {SERVE_PORT} --bind 127.0.0.1 --directory {reports}`"
                f"\n\nthen open http://127.0.0.1:{SERVE_PORT}/{page} . Set "
                f'`PipelineSettings(report_url_base="http://127.0.0.1:{SERVE_PORT}")` '
                "(component: `report_url_base`) and `audit_report` becomes a link."
            )
        return (
            f"Serve `{self.path}`'s reports folder over http (e.g. an S3 static website) and "
            "set `PipelineSettings(report_url_base=...)` (component: `report_url_base`) to "
            f"its URL: `audit_report` then links `<report_url_base>/{page}`. Or write a "
            f"local copy: `bria-dagster lineage report --batch {self.batch} --pipeline "
            f"{self.pipeline} --base {self.storage} --out {self.batch}.html`."
        )

    def products_markdown(self, limit: int = PRODUCTS_SHOWN) -> str:
        """What each product became, failed products first: per step its images (short
        sha256 and size) or its failure, and what it cost; at most ``limit`` products."""
        from ..orchestration.metadata import _text

        ordered = sorted(self.product_summaries, key=lambda p: p.failures == 0)
        shown = ordered[:limit]
        failed = sum(1 for p in self.product_summaries if p.failures)
        heading = f"**{len(shown)} of {self.products} products**"
        if failed:
            heading += f", failed products first ({failed} failed)"
        heading += ": each step's images (sha256, size); every image in `audit_report`"
        assets = [step.asset for step in self.steps]
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
                f"| {_text(product.sku)} | {status} | {' | '.join(cells)} "
                f"| {_usd(product.cost_usd)} |"
            )
        if len(ordered) > limit:
            lines.append(
                f"\n{len(ordered) - limit} more products in `audit_report` "
                "(raise `preview_rows` to list them here)."
            )
        return "\n".join(lines)


def _product_cell(step: ProductStep | None) -> str:
    from ..orchestration.metadata import (
        _text,  # markdown escaping (dagster-side: imported when used)
    )

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


# --------------------------------------------------------------------------- public API


def default_report_path(
    storage: PipelineStorage | str | os.PathLike[str], batch: str, pipeline: str = DEFAULT_PIPELINE
) -> str:
    """``<base>/reports/<pipeline>/<batch>.html``: where a report goes when no ``out`` is given."""
    return f"{_base(storage).rstrip('/')}/reports/{pipeline}/{batch}.html"


def audit_batches(
    storage: PipelineStorage | str | os.PathLike[str], pipeline: str = DEFAULT_PIPELINE
) -> list[str]:
    """The batches that have at least one step table of ``pipeline`` under ``storage``."""
    tables = _Tables(_base(storage), pipeline)
    return sorted({stem for _, stem, _ in tables.files})


def render_audit_report(
    storage: PipelineStorage | str | os.PathLike[str],
    batch: str,
    *,
    pipeline: str = DEFAULT_PIPELINE,
    thumbnail_px: int = THUMBNAIL_PX,
) -> str:
    """The audit report of ``batch`` as one HTML string (see :func:`write_audit_report`).

    The whole page is held in memory: for big batches write it with
    :func:`write_audit_report` instead.
    """
    buffer = io.StringIO()
    _Batch.load(_base(storage), batch, pipeline).render(buffer.write, thumbnail_px)
    return buffer.getvalue()


def write_audit_report(
    storage: PipelineStorage | str | os.PathLike[str],
    batch: str,
    out: str | os.PathLike[str] | None = None,
    *,
    pipeline: str = DEFAULT_PIPELINE,
    thumbnail_px: int = THUMBNAIL_PX,
) -> AuditReport:
    """Write the audit report of ``batch`` of ``pipeline`` as one self-contained HTML file.

    Args:
        storage: the pipeline's storage (a :class:`~bria_dagster.PipelineStorage`, a folder
            or an fsspec URL): the base holding ``tables/`` and ``images/``.
        batch: the catalog batch (the Dagster partition key).
        out: where to write (a local path or any fsspec URL); default
            :func:`default_report_path` (``<base>/reports/<pipeline>/<batch>.html``).
        pipeline: the pipeline's name, the first part of its asset keys.
        thumbnail_px: the longest side of the thumbnails.

    The page is written to a temporary file first, then moved into place (a local rename,
    or one upload): no reader sees a partial page. Reads every row of the batch's tables
    and every image they name once (to make its thumbnail).

    Raises:
        UnknownBatchError: no table of ``batch`` (the message names the batches there are).
        StorageAccessError: the storage refused access.
        RecordTableError: a table does not read with the ImageRecord schema.
    """
    if thumbnail_px < 16:
        raise ValueError(f"thumbnail_px must be at least 16, not {thumbnail_px}")
    base = _base(storage)
    data = _Batch.load(base, batch, pipeline)
    target = os.fspath(out) if out is not None else default_report_path(base, batch, pipeline)
    fs, path = fsspec.core.url_to_fs(target)
    local = isinstance(fs, LocalFileSystem)
    url = Path(path).as_uri() if local else target
    with storage_access(url, "write audit report"):
        size = _write_atomically(fs, path, lambda write: data.render(write, thumbnail_px))
    return data.summary(path=path if local else url, url=url, size_bytes=size)


# --------------------------------------------------------------------------- reading


def _base(storage: PipelineStorage | str | os.PathLike[str]) -> str:
    base = getattr(storage, "base", None)  # a PipelineStorage (not imported: no Dagster here)
    return str(base) if base is not None else os.fspath(storage)  # type: ignore[arg-type]


class _Tables:
    """The step tables of one pipeline under a base, listed once."""

    def __init__(self, base: str, pipeline: str) -> None:
        self.base = base
        self.pipeline = pipeline
        self.prefix = f"{pipeline}__"
        self.location = f"{base.rstrip('/')}/tables"
        self.fs, root = fsspec.core.url_to_fs(base)
        self.root = f"{root.rstrip('/')}/tables"
        with storage_access(self.location, "list record tables"):
            found = self.fs.glob(f"{self.root}/*/*.parquet")
        # (folder name, batch, path); hidden or underscore names are temporaries and caches.
        self.all: list[tuple[str, str, str]] = []
        for path in sorted(found):
            folder = posixpath.basename(posixpath.dirname(path))
            name = posixpath.basename(path)
            if name.startswith((".", "_")) or folder.startswith((".", "_")):
                continue
            self.all.append((folder, name[: -len(".parquet")], path))
        self.files = [entry for entry in self.all if entry[0].startswith(self.prefix)]

    def of_batch(self, batch: str) -> list[tuple[str, str]]:
        """``(asset name, path)`` of every table of ``batch``; raises when there is none."""
        found = [(f[len(self.prefix) :], p) for f, b, p in self.files if b == batch]
        if found:
            return found
        known = sorted({b for _, b, _ in self.files})
        where = f"pipeline {self.pipeline!r} under {self.location}"
        if known:
            shown = ", ".join(known[:_BATCHES_NAMED])
            if len(known) > _BATCHES_NAMED:
                shown += f" and {len(known) - _BATCHES_NAMED} more"
            hint = f"its batches are: {shown}"
        else:
            others = sorted({f.split("__", 1)[0] for f, _, _ in self.all if "__" in f})
            hint = "it has no tables there"
            if others:
                hint += f" (the tables there are of pipeline(s) {', '.join(others)})"
            else:
                hint += " (run the pipeline first, or check the storage base)"
        raise UnknownBatchError(f"no batch {batch!r} in {where}; {hint}", batch=batch, known=known)

    def read(self, path: str) -> list[dict[str, Any]]:
        url = f"{self.location}/{path.rsplit('/', 2)[-2]}/{posixpath.basename(path)}"
        try:
            dataset = ds.dataset(
                path, schema=IMAGE_RECORD_SCHEMA, format="parquet", filesystem=self.fs
            )
            return dataset.to_table(columns=list(_READ_COLUMNS)).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            refused = storage_access_error(url, exc, "read record table")
            if refused is not None:
                raise refused from exc
            raise RecordTableError(
                f"cannot read record table {url} with the ImageRecord schema: {exc}"
            ) from exc


@dataclass
class _Product:
    sku: str
    rows: list[int]
    roots: list[int]
    children: dict[int, list[int]]


class _Batch:
    """The rows of one batch, linked per sku, with everything the page shows."""

    def __init__(
        self, base: str, batch: str, pipeline: str, tables: list[tuple[str, list[dict]]]
    ) -> None:
        self.base, self.batch, self.pipeline = base, batch, pipeline
        self.rows: list[dict[str, Any]] = []
        for asset, rows in tables:
            for row in rows:
                row["_asset"] = asset
                self.rows.append(row)
        self.products = self._link()
        self.assets = self._asset_order([asset for asset, _ in tables])
        rank = {asset: i for i, asset in enumerate(self.assets)}
        for product in self.products:
            self._attach_cascades(product, rank)
            product.roots.sort(key=lambda i: self._row_key(i, rank))
            for kids in product.children.values():
                kids.sort(key=lambda i: self._row_key(i, rank))
        self.rank = rank
        self.steps = tuple(self._step_summary(asset) for asset in self.assets)
        self.generated_at = datetime.now(UTC)
        self.missing_images = 0

    @classmethod
    def load(cls, base: str, batch: str, pipeline: str) -> _Batch:
        tables = _Tables(base, pipeline)
        found = tables.of_batch(batch)
        found.sort(key=lambda entry: (_known_step_rank(entry[0]), entry[0]))
        with ThreadPoolExecutor(max_workers=min(8, len(found))) as pool:
            read = list(pool.map(lambda entry: tables.read(entry[1]), found))
        named = [(asset, rows) for (asset, _), rows in zip(found, read, strict=True)]
        return cls(base, batch, pipeline, named)

    # -- linking -------------------------------------------------------------------------

    def _link(self) -> list[_Product]:
        """Per sku (first-seen order): its rows, each linked to the row of its parent image."""
        by_sku: dict[str, list[int]] = {}
        for i, row in enumerate(self.rows):
            by_sku.setdefault(str(row["sku"]), []).append(i)
        products = []
        self.depth: dict[int, int] = {}
        for sku, indices in by_sku.items():
            owner: dict[str, int] = {}  # image sha -> the row shown as that image
            for i in indices:
                row = self.rows[i]
                sha = row["image_sha256"]
                # A no-op row holds its parent's image: the parent's row shows that image.
                if sha and row["status"] != FAILED and row["parent_sha256"] != sha:
                    held = owner.get(sha)
                    if held is None or (self.rows[held]["status"] != OK and row["status"] == OK):
                        owner[sha] = i
            children: dict[int, list[int]] = {}
            attached: set[int] = set()
            for i in indices:
                parent = owner.get(self.rows[i]["parent_sha256"] or "")
                if parent is not None and parent != i:
                    children.setdefault(parent, []).append(i)
                    attached.add(i)
            roots = [i for i in indices if i not in attached]
            # Depth first from the roots; a row only reachable through a cycle becomes a root.
            seen: set[int] = set()
            for root in roots:
                self._walk(root, 0, children, seen)
            for i in indices:
                if i not in seen:
                    roots.append(i)
                    self._walk(i, 0, children, seen)
            products.append(_Product(sku, indices, roots, children))
        return products

    def _walk(self, root: int, depth: int, children: dict[int, list[int]], seen: set[int]) -> None:
        stack = [(root, depth)]
        while stack:
            i, d = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            self.depth[i] = d
            stack.extend((kid, d + 1) for kid in children.get(i, ()))

    def _attach_cascades(self, product: _Product, rank: Mapping[str, int]) -> None:
        """Hang each failed row without a parent image (a step not run because an earlier
        one failed) under the failed row of the nearest earlier step of its sku, so a failed
        chain reads source -> cutout -> ... like a good one."""
        failed = [i for i in product.rows if self._failed(i)]
        for i in [i for i in product.roots if i in failed]:
            row = self.rows[i]
            if row["step"] == "source" or row["parent_sha256"]:
                continue
            earlier = [j for j in failed if rank[self.rows[j]["_asset"]] < rank[row["_asset"]]]
            if not earlier:
                continue
            nearest = max(rank[self.rows[j]["_asset"]] for j in earlier)
            candidates = [j for j in earlier if rank[self.rows[j]["_asset"]] == nearest]
            variant = str(row["variant"])
            parent = next(
                (j for j in candidates if variant.startswith(str(self.rows[j]["variant"]))),
                candidates[0],
            )
            product.children.setdefault(parent, []).append(i)
            product.roots.remove(i)

    def _asset_order(self, assets: list[str]) -> list[str]:
        """Assets in chain order: by how far their linked rows are from the source."""
        linked: dict[str, int] = {}
        steps: dict[str, str] = {}
        for product in self.products:
            roots = set(product.roots)
            for i in product.rows:
                row = self.rows[i]
                asset = row["_asset"]
                steps.setdefault(asset, row["step"])
                if i in roots and row["step"] != "source":
                    continue  # not linked (e.g. failed upstream): says nothing of the order
                d = self.depth.get(i, 0)
                linked[asset] = min(d, linked.get(asset, d))

        def key(asset: str) -> tuple[int, int, str]:
            known = STEP_ORDER.get(steps.get(asset, ""), _known_step_rank(asset))
            return (linked.get(asset, known), known, asset)

        return sorted(assets, key=key)

    def _row_key(self, i: int, rank: Mapping[str, int]) -> tuple[int, str, str]:
        row = self.rows[i]
        return (rank.get(row["_asset"], len(rank)), str(row["variant"]), str(row["status"]))

    # -- summaries -----------------------------------------------------------------------

    def _step_summary(self, asset: str) -> StepSummary:
        rows = [row for row in self.rows if row["_asset"] == asset]
        status = Counter(row["status"] for row in rows)
        made = [row for row in rows if row["status"] == OK]
        priced = [row for row in rows if row["status"] in (OK, REUSED)]
        calls = {row["request_id"] for row in made if row["request_id"] and row["endpoint_id"]}
        return StepSummary(
            asset=asset,
            step="/".join(dict.fromkeys(str(row["step"]) for row in rows)),
            rows=len(rows),
            ok=status[OK],
            reused=status[REUSED],
            failed=status[FAILED],
            backend_calls=len(calls),
            cost_usd=round(sum(row["cost_usd"] or 0.0 for row in rows), 6),
            list_price_usd=round(sum(row["unit_price_usd"] or 0.0 for row in priced), 6),
            unit_prices_usd=tuple(
                sorted({row["unit_price_usd"] for row in priced if row["unit_price_usd"]})
            ),
            backends=tuple(
                sorted({row["backend"] for row in priced if row["backend"] not in (None, NOOP)})
            ),
            endpoints=tuple(sorted({row["endpoint_id"] for row in priced if row["endpoint_id"]})),
            noop=sum(1 for row in made if row["backend"] == NOOP),
        )

    def summary(self, *, path: str | None, url: str | None, size_bytes: int) -> AuditReport:
        failed_skus = {p.sku for p in self.products if any(self._failed(i) for i in p.rows)}
        return AuditReport(
            path=path,
            url=url,
            batch=self.batch,
            pipeline=self.pipeline,
            storage=self.base,
            products=len(self.products),
            images=sum(s.ok + s.reused for s in self.steps),
            failures=sum(s.failed for s in self.steps),
            failed_products=len(failed_skus),
            cost_usd=round(sum(s.cost_usd for s in self.steps), 6),
            list_price_usd=round(sum(s.list_price_usd for s in self.steps), 6),
            missing_images=self.missing_images,
            steps=self.steps,
            size_bytes=size_bytes,
            product_summaries=tuple(self._product_summary(p) for p in self.products),
        )

    def _product_summary(self, product: _Product) -> ProductSummary:
        rows = sorted(product.rows, key=lambda i: self._row_key(i, self.rank))
        steps = []
        for asset in self.assets:
            mine = [self.rows[i] for i in rows if self.rows[i]["_asset"] == asset]
            if not mine:
                continue
            failed = [row for row in mine if row["status"] == FAILED]
            steps.append(
                ProductStep(
                    asset=asset,
                    images=tuple(
                        (str(row["image_sha256"]), row["width"], row["height"])
                        for row in mine
                        if row["status"] in (OK, REUSED) and row["image_sha256"]
                    ),
                    reused=sum(1 for row in mine if row["status"] == REUSED),
                    failed=len(failed),
                    error_class=failed[0]["error_class"] if failed else None,
                )
            )
        return ProductSummary(
            sku=product.sku,
            images=sum(len(step.images) for step in steps),
            failures=sum(step.failed for step in steps),
            cost_usd=round(sum(self.rows[i]["cost_usd"] or 0.0 for i in rows), 6),
            steps=tuple(steps),
        )

    def _failed(self, i: int) -> bool:
        return self.rows[i]["status"] == FAILED

    def _has_image(self, i: int) -> bool:
        row = self.rows[i]
        return row["status"] in (OK, REUSED) and bool(row["image_sha256"])

    # -- the page ------------------------------------------------------------------------

    def render(self, write: Callable[[str], Any], thumbnail_px: int) -> None:
        """Write the page through ``write``, products :data:`CHUNK_SKUS` at a time."""
        self.missing_images = 0
        totals = self.summary(path=None, url=None, size_bytes=0)
        write(_page_head(f"Audit report: batch {self.batch} ({self.pipeline})"))
        write(self._header(totals))
        write(self._failures_section(totals))
        write(self._costs_section(totals))
        write(self._runs_section())
        write(f'<section id="products"><h2>Products ({totals.products})</h2>\n')
        if totals.products > OPEN_SKUS:
            write(
                '<p class="note">Each product is folded: open it to see its chain. '
                "Products with a failure are marked "
                '<span class="badge failed">failed</span>.</p>\n'
            )
        thumbs = _Thumbnails(self.rows, self.products, self._has_image, thumbnail_px)
        with ThreadPoolExecutor(max_workers=THUMBNAIL_WORKERS) as pool:
            for start in range(0, len(self.products), CHUNK_SKUS):
                chunk = self.products[start : start + CHUNK_SKUS]
                thumbs.prepare(chunk, pool)
                parts = [self._product(n, p, thumbs, totals) for n, p in enumerate(chunk, start)]
                write("".join(parts))
        self.missing_images = thumbs.missing
        write("</section>\n")
        write(
            f"<footer>Written by bria-dagster {_e(__version__)} from the step tables under "
            f"<code>{_e(self.base.rstrip('/'))}/tables</code>; "
            f"{thumbs.made} thumbnail(s) made, {thumbs.missing} image(s) missing.</footer>\n"
            "</body>\n</html>\n"
        )

    def _header(self, totals: AuditReport) -> str:
        failures = "failed" if totals.failures else "ok"
        generated = self.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        boxes = [
            ("products", str(totals.products), ""),
            ("images", str(totals.images), ""),
            ("failures", str(totals.failures), failures),
            ("failed products", str(totals.failed_products), failures),
            ("cost_usd (paid)", _usd(totals.cost_usd), ""),
            ("list price", _usd(totals.list_price_usd), ""),
        ]
        return (
            f"<header><h1>Audit report: batch <code>{_e(self.batch)}</code></h1>\n"
            '<dl class="meta">'
            f"<dt>batch</dt><dd><code>{_e(self.batch)}</code></dd>"
            f"<dt>pipeline</dt><dd><code>{_e(self.pipeline)}</code></dd>"
            f"<dt>storage</dt><dd><code>{_e(self.base)}</code></dd>"
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
        failed = [i for i in range(len(self.rows)) if self._failed(i)]
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

    def _product(self, n: int, product: _Product, thumbs: _Thumbnails, totals: AuditReport) -> str:
        rows = [self.rows[i] for i in product.rows]
        failed = sum(1 for row in rows if row["status"] == FAILED)
        images = sum(1 for i in product.rows if self._has_image(i))
        cost = sum(row["cost_usd"] or 0.0 for row in rows)
        opened = " open" if totals.products <= OPEN_SKUS else ""
        flag = f' <span class="badge failed">{failed} failed</span>' if failed else ""
        out = [
            f'<details class="sku{" has-failure" if failed else ""}" id="sku-{n}" '
            f'data-sku="{_e(product.sku)}"{opened}><summary><span class="sku-name">'
            f"{_e(product.sku)}</span> <small>{images} image(s), cost_usd {_usd(cost)}</small>"
            f'{flag}</summary>\n<div class="chain">\n'
        ]
        seen: set[int] = set()
        for root in product.roots:
            out.append(self._node(root, product, thumbs, seen))
        out.append("</div></details>\n")
        return "".join(out)

    def _node(self, root: int, product: _Product, thumbs: _Thumbnails, seen: set[int]) -> str:
        """``root`` and its descendants as nested flex boxes (iterative: no recursion limit)."""
        out: list[str] = []
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
            out.append(self._card(i, product, thumbs))
            out.append('<div class="kids">')
            stack.append(None)
            stack.extend(reversed(product.children.get(i, [])))
        return "".join(out)

    def _card(self, i: int, product: _Product, thumbs: _Thumbnails) -> str:
        row = self.rows[i]
        status = str(row["status"])
        sha = row["image_sha256"]
        if self._has_image(i):
            thumb = thumbs.take(sha)
            if thumb is None:
                picture = '<div class="noimg missing">image missing from the store</div>'
            else:
                uri, w, h, alpha = thumb
                alt = f"{product.sku} {row['step']} {row['variant']}"
                css = ' class="alpha"' if alpha else ""
                picture = (
                    f'<img{css} src="{uri}" width="{w}" '
                    f'height="{h}" alt="{_e(alt)}" data-sha256="{_e(sha)}">'
                )
        else:
            picture = f'<div class="noimg">{"not made" if status == FAILED else "no image"}</div>'
        facts: list[tuple[str, str]] = []
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
        if row["reused_in_run_id"]:
            facts.append(
                ("reused in", f'<code class="reused-in">{_e(row["reused_in_run_id"])}</code>')
            )
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
        return (
            f'<div class="card {_e(status)}" data-step="{_e(row["step"])}" '
            f'data-asset="{_e(row["_asset"])}" data-status="{_e(status)}">'
            f'<div class="thumb">{picture}</div><div class="info">'
            f'<div class="title"><b>{_e(row["step"])}</b> <small>{_e(row["_asset"])}</small> '
            f'<span class="badge {_e(status)}">{_e(status)}</span></div>'
            f'<div class="variant">{_e(row["variant"])}</div><dl>'
            + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
            + f"</dl>{error}</div></div>"
        )


# --------------------------------------------------------------------------- thumbnails


class _Thumbnails:
    """Thumbnails as data URIs, made once per sha256 and dropped after their last use."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        products: list[_Product],
        has_image: Callable[[int], bool],
        px: int,
    ) -> None:
        self.rows = rows
        self.has_image = has_image
        self.px = px
        self.uses: Counter[str] = Counter(
            rows[i]["image_sha256"] for p in products for i in p.rows if has_image(i)
        )
        self.ready: dict[str, tuple[str, int, int, bool] | None] = {}
        self.made = 0
        self.missing = 0
        self._stores: dict[str, ImageStore] = {}

    def prepare(self, products: Iterable[_Product], pool: ThreadPoolExecutor) -> None:
        wanted: dict[str, dict[str, Any]] = {}
        for product in products:
            for i in product.rows:
                sha = self.rows[i]["image_sha256"]
                if self.has_image(i) and sha not in self.ready and sha not in wanted:
                    wanted[sha] = self.rows[i]
        for sha, thumb in zip(wanted, pool.map(self._make, wanted.values()), strict=True):
            self.ready[sha] = thumb
            if thumb is None:
                self.missing += 1
            else:
                self.made += 1

    def take(self, sha: str) -> tuple[str, int, int, bool] | None:
        thumb = self.ready.get(sha)
        self.uses[sha] -= 1
        if self.uses[sha] <= 0:
            self.ready.pop(sha, None)
            del self.uses[sha]
        return thumb

    def _make(self, row: Mapping[str, Any]) -> tuple[str, int, int, bool] | None:
        data = self._read(row)
        if data is None:
            return None
        try:
            return thumbnail_data_uri(data, self.px)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None

    def _read(self, row: Mapping[str, Any]) -> bytes | None:
        """The image bytes: where ``image_uri`` says, else by sha256 in the same store."""
        uri = row["image_uri"]
        if not uri:
            return None
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            with storage_access(uri, "read image"):
                return fs.cat_file(path)
        except StorageAccessError:
            raise
        except (OSError, ValueError):
            pass
        folder = uri.rsplit("/sha256/", 1)[0] if "/sha256/" in uri else None
        if folder is None:
            return None
        store = self._stores.get(folder)
        try:
            if store is None:
                store = self._stores.setdefault(folder, ImageStore(folder))
            return store.get(row["image_sha256"])
        except StorageAccessError:
            raise
        except (OSError, ValueError):
            return None


def thumbnail_data_uri(data: bytes, px: int = THUMBNAIL_PX) -> tuple[str, int, int, bool]:
    """``(data URI, width, height, has_alpha)`` of a thumbnail of ``data`` (longest side ``px``).

    A JPEG decodes at a reduced scale (``Image.draft``); an image with transparency
    becomes a palette PNG that keeps its alpha (shown over a checkerboard), any other
    a JPEG.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.draft(None, (px, px))  # JPEG: decode at 1/2, 1/4 or 1/8 scale (no-op otherwise)
        img.thumbnail((px, px), reducing_gap=2.0)
        alpha = "A" in img.getbands() or "transparency" in img.info
        if alpha:
            rgba = img.convert("RGBA")
            alpha = rgba.getchannel("A").getextrema()[0] < 255
            img = rgba if alpha else rgba.convert("RGB")
        buffer = io.BytesIO()
        if alpha:
            _palette_png(img, buffer)
            kind = "image/png"
        else:
            img.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
            kind = "image/jpeg"
        width, height = img.size
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:{kind};base64,{encoded}", width, height, alpha


def _palette_png(img: Image.Image, buffer: io.BytesIO) -> None:
    """``img`` (RGBA) as a 256-colour PNG with alpha, about a third of a full RGBA PNG.

    The quantizer also rounds alpha: nearly opaque or clear palette entries are snapped
    back to 255 or 0, so the product does not show the checkerboard through it.
    """
    quantized = img.quantize(256, method=Image.Quantize.FASTOCTREE)
    palette = bytearray(quantized.getpalette("RGBA") or b"")
    for k in range(3, len(palette), 4):
        palette[k] = 255 if palette[k] >= 248 else 0 if palette[k] <= 7 else palette[k]
    quantized.putpalette(palette, "RGBA")
    quantized.save(buffer, "PNG", optimize=True)


# --------------------------------------------------------------------------- writing


def _write_atomically(
    fs: fsspec.AbstractFileSystem, path: str, render: Callable[[Callable[[str], Any]], None]
) -> int:
    """Stream ``render``'s text to ``path`` so that no reader sees a partial file.

    A local file is written under a temporary name in its folder and renamed into place
    (as :func:`bria_dagster.records.store.write_bytes` does, without holding the page in memory);
    elsewhere the page goes to a local temporary file, then up in one ``put``.
    Returns the size in bytes.
    """
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                render(fh.write)
                fh.flush()
                size = fh.tell()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size
    with tempfile.TemporaryDirectory(prefix="bria-report-") as folder:
        local = os.path.join(folder, "report.html")
        with open(local, "w", encoding="utf-8", newline="\n") as fh:
            render(fh.write)
            size = fh.tell()
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with open(local, "rb") as src, fs.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return size


# --------------------------------------------------------------------------- formatting


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _usd(value: float) -> str:
    return f"{value:.4f}"


def _price(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


# translator.STEP_ASSETS inverted (not imported: translator imports Dagster).
_DEFAULT_ASSETS = {
    "catalog_batch": 0,
    "product_cutouts": 1,
    "product_scenes": 2,
    "product_expansions": 3,
}


def _known_step_rank(asset: str) -> int:
    return _DEFAULT_ASSETS.get(asset, len(_DEFAULT_ASSETS))


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
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
    )


_CSS = """
:root{--ok:#1b7f3b;--reused:#2f5fb3;--failed:#b3261e;--line:#d8dbe0;--muted:#5f6670}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
padding:16px 24px;max-width:1600px;color:#1d2024;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 12px}
.meta dt{color:var(--muted)}.meta dd{margin:0;overflow-wrap:anywhere}
.totals{display:flex;flex-wrap:wrap;gap:8px}
.total{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:110px}
.total .value{display:block;font-size:20px;font-weight:600}
.total .label{color:var(--muted);font-size:12px}
.total.failed{border-color:var(--failed);color:var(--failed)}
.note{color:var(--muted);font-size:12px}
nav{margin-top:8px}
table{border-collapse:collapse;width:100%;margin:4px 0}
th,td{border:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad,.error-class{color:var(--failed);font-weight:600}
tr.sum td{font-weight:600;background:#fafafa}
.alert h2{color:var(--failed)}
table.failures pre{max-width:70ch}
details.sku{border:1px solid var(--line);border-radius:6px;margin:6px 0;padding:4px 8px}
details.sku.has-failure{border-left:4px solid var(--failed)}
details.sku>summary{cursor:pointer;padding:2px 0}
.sku-name{font-weight:600}
.chain{overflow-x:auto;padding:8px 0}
.node{display:flex;align-items:flex-start;gap:10px}
.kids{display:flex;flex-direction:column;gap:10px}
.kids:empty{display:none}
.kids>.node{position:relative;padding-left:14px;border-left:2px solid var(--line)}
.kids>.node::before{content:"→";position:absolute;left:-2px;top:4px;color:var(--muted)}
.node+.node{margin-top:10px}
.card{width:260px;flex:none;border:1px solid var(--line);border-radius:6px;padding:6px;
background:#fff}
.card.failed{border-color:var(--failed);background:#fdf3f2}
.card.reused{border-color:#b7c8ea}
.thumb{display:flex;justify-content:center;align-items:center;min-height:40px}
.thumb img{max-width:100%;height:auto;border-radius:3px}
img.alpha{background:repeating-conic-gradient(#cfd3d8 0 25%,#fff 0 50%) 50%/16px 16px}
.noimg{color:var(--muted);font-size:12px;padding:12px;border:1px dashed var(--line);
border-radius:3px;width:100%;text-align:center}
.noimg.missing{color:var(--failed);border-color:var(--failed)}
.title small,.variant{color:var(--muted)}
.info dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 6px;margin:4px 0 0;
font-size:12px}
.info dt{color:var(--muted)}.info dd{margin:0;overflow-wrap:anywhere}
.param{display:inline-block;margin-right:6px}
.badge{display:inline-block;border-radius:10px;padding:0 7px;font-size:11px;color:#fff;
background:var(--muted)}
.badge.ok{background:var(--ok)}.badge.reused{background:var(--reused)}
.badge.failed{background:var(--failed)}
.error{margin-top:4px;font-size:12px}
footer{margin-top:24px;color:var(--muted);font-size:12px}
@media print{details.sku{break-inside:avoid}.chain{overflow:visible}}
"""
