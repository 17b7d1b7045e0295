"""The audit report's data: a batch's rows linked per sku into chains, and its totals.

Each sku's rows are linked by ``parent_sha256`` -> ``image_sha256`` (source -> cutout ->
scene(s) -> expansion(s), and any step added later, placed by its lineage); a row not
made because an earlier step failed hangs under that failure. :class:`StepSummary`,
:class:`ProductSummary` and :class:`AuditReport` are what the page and the caller read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ...records.schema import FAILED, OK, REUSED
from ...records.schema import NOOP_BACKEND as NOOP
from ...steps.registry import all_steps, step_rank
from .tables import StepTables

DEFAULT_PIPELINE = "product_images"


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
class ReportWork:
    """What writing the page took: whether the last one was kept, and what the cache saved."""

    reused: bool = False
    """The page was current (same step tables, same renderer): kept, nothing written."""
    reason: str = ""
    """Why the page was kept, or why it was rebuilt."""
    files_written: int = 0
    """The page and the cache's two files on a rebuild; 0 when the page was kept."""
    sections_rendered: int = 0
    sections_cached: int = 0
    """Products whose section was drawn, or taken from the cache (their rows unchanged)."""
    thumbnails_made: int = 0
    thumbnails_cached: int = 0
    """Thumbnails made from the image, or taken from the cache (by the image's sha256)."""


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
    work: ReportWork = field(default_factory=ReportWork)

    def plain(self) -> dict[str, Any]:
        """The batch's totals as JSON-ready data (where the page is, and ``work``, left out)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_PLAIN}
        data["steps"] = [dict(vars(step)) for step in self.steps]
        data["product_summaries"] = [
            {**vars(p), "steps": [dict(vars(step)) for step in p.steps]}
            for p in self.product_summaries
        ]
        return data

    @classmethod
    def from_plain(
        cls, data: Mapping[str, Any], *, path: str | None, url: str | None, work: ReportWork
    ) -> AuditReport:
        """:meth:`plain`'s data back as a report of the page at ``path``."""
        steps = tuple(
            StepSummary(
                **{
                    **step,
                    "unit_prices_usd": tuple(step["unit_prices_usd"]),
                    "backends": tuple(step["backends"]),
                    "endpoints": tuple(step["endpoints"]),
                }
            )
            for step in data["steps"]
        )
        products = tuple(
            ProductSummary(
                **{
                    **p,
                    "steps": tuple(
                        ProductStep(**{**s, "images": tuple(tuple(i) for i in s["images"])})
                        for s in p["steps"]
                    ),
                }
            )
            for p in data["product_summaries"]
        )
        plain = {k: v for k, v in data.items() if k not in _NOT_PLAIN}
        return cls(path=path, url=url, **plain, steps=steps, product_summaries=products, work=work)

    def http_url(self, url_base: str | None) -> str | None:
        """Where the page is over http: ``url`` when it is already, else
        ``<url_base>/<pipeline>/<batch>.html`` when ``url_base`` serves ``<base>/reports``
        (the page's default place); ``None`` when neither."""
        if self.url and self.url.startswith(("http://", "https://")):
            return self.url
        if url_base:
            return f"{url_base.rstrip('/')}/{quote(self.pipeline)}/{quote(self.batch)}.html"
        return None


_NOT_PLAIN = ("path", "url", "work", "steps", "product_summaries")


@dataclass
class ProductChain:
    """One sku's rows (indices into the batch's rows) as trees: roots and their children."""

    sku: str
    rows: list[int]
    roots: list[int]
    children: dict[int, list[int]]


class ReportBatch:
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

    @classmethod
    def load(
        cls, base: str, batch: str, pipeline: str, found: list[tuple[str, str]] | None = None
    ) -> ReportBatch:
        """The rows of ``batch``'s step tables (``found``: their ``(asset, path)``, when
        already listed)."""
        if found is None:
            found = StepTables(base, pipeline).of_batch(batch)
        found = sorted(found, key=lambda entry: (_known_step_rank(entry[0]), entry[0]))
        with ThreadPoolExecutor(max_workers=min(8, len(found))) as pool:
            read = list(pool.map(lambda entry: StepTables.read(entry[1]), found))
        named = [(asset, rows) for (asset, _), rows in zip(found, read, strict=True)]
        return cls(base, batch, pipeline, named)

    # -- linking -------------------------------------------------------------------------

    def _link(self) -> list[ProductChain]:
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
            products.append(ProductChain(sku, indices, roots, children))
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

    def _attach_cascades(self, product: ProductChain, rank: Mapping[str, int]) -> None:
        """Hang each failed row without a parent image (a step not run because an earlier
        one failed) under the failed row of the nearest earlier step of its sku, so a failed
        chain reads source -> cutout -> ... like a good one."""
        failed = [i for i in product.rows if self.failed(i)]
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
            known = step_rank().get(steps.get(asset, ""), _known_step_rank(asset))
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

    def summary(
        self, *, path: str | None, url: str | None, size_bytes: int, missing_images: int = 0
    ) -> AuditReport:
        failed_skus = {p.sku for p in self.products if any(self.failed(i) for i in p.rows)}
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
            missing_images=missing_images,
            steps=self.steps,
            size_bytes=size_bytes,
            product_summaries=tuple(self._product_summary(p) for p in self.products),
        )

    def _product_summary(self, product: ProductChain) -> ProductSummary:
        by_asset: dict[str, list[dict[str, Any]]] = {}
        for i in sorted(product.rows, key=lambda i: self._row_key(i, self.rank)):
            by_asset.setdefault(self.rows[i]["_asset"], []).append(self.rows[i])
        steps = []
        for asset in self.assets:
            mine = by_asset.get(asset)
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
            cost_usd=round(sum(self.rows[i]["cost_usd"] or 0.0 for i in product.rows), 6),
            steps=tuple(steps),
        )

    def failed(self, i: int) -> bool:
        return self.rows[i]["status"] == FAILED

    def has_image(self, i: int) -> bool:
        row = self.rows[i]
        return row["status"] in (OK, REUSED) and bool(row["image_sha256"])


# Each step's default asset name, ranked as the steps are listed.
_DEFAULT_ASSETS = {
    "catalog_batch": 0,
    **{step.asset: step_rank()[step.name] for step in all_steps()},
}


def _known_step_rank(asset: str) -> int:
    return _DEFAULT_ASSETS.get(asset, len(_DEFAULT_ASSETS))
