"""The audit report: one self-contained HTML page per batch, read as HTML and in Chromium.

Two stores: the tables of two real offline runs of the pipeline (a good sku, a sku whose
name is HTML, a scene refused by the backend with a long multi-line error, a missing
source file, a bad catalog cell; the second run changes one prompt, so most rows are
reused), and a hand-made one with paid costs, a step added later (``product_packshots``,
one variant per channel) and two packshots that are the same image.

The page is parsed with ``html.parser`` and opened in headless Chromium (Debian's
``/usr/bin/chromium``, started here on a file:// URL and driven over the DevTools
protocol with aiohttp's websocket client): it must render and every ``<img>`` must decode
(``naturalWidth > 0``); a page with one corrupted thumbnail must show exactly that one
as broken.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bria_dagster import PipelineSettings
from bria_dagster.cli import main
from bria_dagster.client.backends.local import LocalBackend
from bria_dagster.errors import FalRequestError
from bria_dagster.lineage.frame import load_records
from bria_dagster.lineage.report import (
    UnknownBatchError,
    default_report_path,
    render_audit_report,
    thumbnail_data_uri,
    write_audit_report,
)
from bria_dagster.orchestration.report_metadata import audit_report_metadata
from bria_dagster.records.schema import reused_record
from bria_dagster.records.store import ImageStore
from bria_dagster.records.tables import frame_to_table, records_to_frame
from bria_dagster.steps.settings import CheckSettings
from tests.test_lineage import record
from tests.test_pipeline import BATCH, materialize, product, write_catalog

CHROMIUM = "/usr/bin/chromium"
SKU_HTML = "A2 <b>&\"x'"
ASSETS = ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions")
LONG_ERROR = (
    "the scene for A3 was refused <script>alert('x')</script> & not paid:\n"
    + "\n".join(f"  detail line {i}: prompt rejected by the moderation filter" for i in range(12))
    + "\nend of the error"
)
REPLACE = "fal-ai/bria/background/replace"
REFUSED_PROMPT = "a scene the moderation filter refuses"


# --------------------------------------------------------------------------- stores


@dataclass
class Runs:
    base: str
    first: str
    second: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Two offline runs of batch b1; the backend refuses A3's scene (a long error)."""
    folder = tmp_path_factory.mktemp("pipeline")

    def catalog(prompt: str) -> None:
        write_catalog(
            folder,
            [
                {"sku": "A1", "image_url": product(folder, "A1", 1), "prompt": ""},
                {
                    "sku": SKU_HTML,
                    "image_url": product(folder, "A2", 2, "colored"),
                    "prompt": prompt,
                },
                {
                    "sku": "A3",
                    "image_url": product(folder, "A3", 3, "gray_gradient"),
                    "prompt": REFUSED_PROMPT,
                },
                {"sku": "A4", "image_url": "../images/missing.jpg", "prompt": ""},
                {"sku": "A5", "image_url": product(folder, "A5", 5), "aspect_ratios": "1:1,7:0"},
            ],
        )

    original = LocalBackend.run

    async def refusing(backend: LocalBackend, request: Any, **kwargs: Any) -> Any:
        if request.endpoint_id == REPLACE and request.prompt == REFUSED_PROMPT:
            raise FalRequestError(LONG_ERROR, status_code=422)
        return await original(backend, request, **kwargs)

    settings = PipelineSettings(
        catalog_dir=str(folder / "catalogs"),
        aspect_ratios=("1:1",),
        # A3, A4 and A5 fail on purpose (3 of 5 products): the report shows them, the runs pass.
        checks=CheckSettings(fail_run_above=0.9),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalBackend, "run", refusing)
        catalog("on oak wood")
        first, instance = materialize(folder, settings=settings)
        catalog("on white marble")  # A2's scene and expansion again, the rest reused
        second, _ = materialize(folder, settings=settings, instance=instance)
    return Runs(str(folder / "data"), first.run_id, second.run_id)


def _picture(seed: int, size: tuple[int, int], alpha: bool = False) -> Image.Image:
    img = Image.new("RGBA" if alpha else "RGB", size, (240, 240, 240, 0 if alpha else 255))
    w, h = size
    box = (w // 4 + seed, h // 4, 3 * w // 4, 3 * h // 4)
    img.paste((180, 40 + 30 * seed, 90, 255) if alpha else (180, 40 + 30 * seed, 90), box)
    return img


def _bytes(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


@dataclass
class Synthetic:
    base: str
    rows: list[dict[str, Any]]
    packshot: str  # the sha both packshots of S1 share


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return build_synthetic(str(tmp_path_factory.mktemp("synthetic") / "data"))


def build_synthetic(base: str) -> Synthetic:
    """Paid rows (fal prices), a later ``packshot`` step, a reused row, a failed expansion."""
    store = ImageStore(f"{base}/images")
    rows: list[dict[str, Any]] = []

    def put(row: dict[str, Any], img: Image.Image, fmt: str, kind: str) -> dict[str, Any]:
        stored = store.put(_bytes(img, fmt), kind)
        row.update(
            image_uri=stored.uri,
            image_sha256=stored.sha256,
            content_type=kind,
            width=img.width,
            height=img.height,
        )
        rows.append(row)
        return row

    packshot_sha = ""
    for n, sku in enumerate(("S1", "S2")):
        # A large JPEG source (decoded at a reduced scale), an RGBA cutout with transparency.
        source = put(
            record("source", sku, "x", None, variant="source") | {"unit_price_usd": None},
            _picture(n, (1600, 1200)),
            "JPEG",
            "image/jpeg",
        )
        source.update(endpoint_id=None, backend=None, request_id=None, cost_usd=0.0)
        cutout = record("remove", sku, "x", source["image_sha256"], variant="cutout")
        if sku == "S2":  # made by an earlier run, reused by run-1: nothing paid
            cutout = reused_record(cutout | {"run_id": "run-0"}, "run-1")
        cutout = put(cutout, _picture(n, (400, 300), alpha=True), "PNG", "image/png")
        scene = put(
            record("replace", sku, "x", cutout["image_sha256"], variant="scene", seed=7),
            _picture(n + 2, (400, 300)),
            "JPEG",
            "image/jpeg",
        )
        put(
            record("expand", sku, "x", scene["image_sha256"], variant="scene@1:1")
            | {"parameters": json.dumps({"aspect_ratio": "1:1"})},
            _picture(n + 3, (300, 300)),
            "JPEG",
            "image/jpeg",
        )
        failed = record(
            "expand",
            sku,
            None,
            scene["image_sha256"],
            variant="scene@9:16",
            status="failed",
            parameters={"aspect_ratio": "9:16"},
        )
        rows.append(failed)
        for channel in ("amazon", "shopify"):  # the same picture for both channels
            packshot = record("remove", sku, "x", cutout["image_sha256"], variant=channel)
            packshot.update(
                step="packshot",
                endpoint_id="acme/packshot",
                asset_key="product_packshots",
                cost_usd=0.01,
                unit_price_usd=0.01,
                request_id=f"req-packshot-{sku}-{channel}",
                parameters=json.dumps({"channel": channel, "margin": 0.1}),
            )
            if sku == "S2" and channel == "amazon":  # made earlier: nothing paid here
                packshot = reused_record(packshot | {"run_id": "run-0"}, "run-1")
            put(packshot, _picture(8 + n, (200, 200)), "PNG", "image/png")
            packshot_sha = packshot["image_sha256"] if sku == "S1" else packshot_sha
    frame = records_to_frame(rows)
    fs, root = fsspec.core.url_to_fs(base)
    for (asset, partition), part in frame.groupby(["asset_key", "partition"]):
        folder = f"{root}/tables/product_images__{asset}"
        fs.makedirs(folder, exist_ok=True)
        table = frame_to_table(part.reset_index(drop=True))
        pq.write_table(table, f"{folder}/{partition}.parquet", filesystem=fs)
    # Another pipeline's table in the same storage: never part of product_images' report.
    other = f"{root}/tables/spring__catalog_batch"
    fs.makedirs(other, exist_ok=True)
    pq.write_table(frame_to_table(frame.head(1)), f"{other}/batch-9.parquet", filesystem=fs)
    return Synthetic(base, rows, packshot_sha)


# --------------------------------------------------------------------------- parsing


class Page(HTMLParser):
    """What the tests look at: texts by CSS class, attributes of tags, the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.by_class: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._open: list[tuple[str, str | None, int]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag not in ("img", "br", "meta"):
            self._open.append((tag, values.get("class"), len(self.text)))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, css, start = self._open.pop()
            if css:
                for one in css.split():
                    self.by_class.setdefault(one, []).append("".join(self.text[start:]))
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attrs(self, tag: str, **having: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(k in a and having[k] in a[k] for k in having)
        ]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


# --------------------------------------------------------------------------- the page


def test_page_shows_every_sku_step_run_and_the_whole_failure(runs):
    text = render_audit_report(runs.base, BATCH)
    page = Page(text)
    records = load_records(runs.base)

    # Every sku, as written (escaped in the source, unescaped by the parser).
    skus = [a["data-sku"] for a in page.attrs("details", **{"class": "sku"})]
    assert skus == ["A1", SKU_HTML, "A3", "A4", "A5"]
    assert "<b>&" not in text and "<script" not in text.lower()
    assert "A2 &lt;b&gt;&amp;&quot;x&#x27;" in text

    # Every step: in the cost table (chain order) and as cards.
    assert [a["data-asset"] for a in page.attrs("tr", **{"data-asset": ""})] == list(ASSETS)
    cards = Counter(a["data-step"] for a in page.attrs("div", **{"class": "card"}))
    assert cards == Counter(records["step"])

    # Both runs: A1's rows were made by the first and reused by the second.
    assert {a["data-run"] for a in page.attrs("tr", **{"data-run": ""})} == {
        runs.first,
        runs.second,
    }
    reused = records[records["status"] == "reused"]
    assert len(reused) and set(reused["run_id"]) == {runs.first}
    assert page.by_class["reused-in"].count(runs.second) == len(reused)
    assert page.by_class["run-id"].count(runs.first) == (records["run_id"] == runs.first).sum()
    assert set(page.by_class["request-id"]) == set(records["request_id"].dropna())

    # Every failure, its message whole (several lines, HTML in it) in the failures table.
    failed = records[records["status"] == "failed"]
    failures = page.attrs("tr", **{"class": "failure"})
    assert len(failures) == len(failed) == 10  # A3: scene, expansion; A4, A5: all 4 steps
    messages = page.by_class["error-message"]
    expected = Counter(failed["error_message"])
    assert Counter(messages) == Counter({m: 2 * n for m, n in expected.items()})  # table, card
    refused = failed[failed["error_class"] == "FalRequestError"]["error_message"].item()
    assert LONG_ERROR in refused and refused in messages
    assert "FetchFailedError" in page.by_class["error-class"]
    root_causes = [a["data-step"] for a in failures[:3]]
    assert root_causes == ["source", "source", "replace"]  # before the cascades

    # Costs: the totals and each step's cells match the tables.
    report = write_audit_report(runs.base, BATCH)
    images = records["status"].isin(["ok", "reused"])
    assert report.products == 5 and report.failures == 10 and report.failed_products == 3
    assert report.images == images.sum() == len(page.attrs("img"))
    assert report.cost_usd == 0.0  # the local engine
    assert report.list_price_usd == pytest.approx(records.loc[images, "unit_price_usd"].sum())
    by_step = {s.asset: s for s in report.steps}
    assert by_step["product_scenes"].backend_calls == 1  # only A2's new prompt was sent
    assert by_step["product_scenes"].unit_prices_usd == (0.023,)
    assert f"{report.list_price_usd:.4f}" in page.by_class["total"][-1]
    assert report.missing_images == 0
    assert report.path == default_report_path(runs.base, BATCH)

    # Nothing outside the page: inline style, data: images, in-page links only.
    assert all(
        a["src"].startswith(("data:image/jpeg;", "data:image/png;")) for a in page.attrs("img")
    )
    assert all(a["href"].startswith("#") for a in page.attrs("a"))
    assert not page.attrs("link") and not page.attrs("script") and "url(http" not in text


def runs_table(text: str) -> dict[str, dict[str, int]]:
    """The Runs table: run_id -> {column header: count} (the count columns)."""
    section = re.search(r'<section id="runs">(.*?)</section>', text, re.S).group(1)
    headers = re.findall(r"<th>(.*?)</th>", section)
    table = {}
    for run, cells in re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', section, re.S):
        values = dict(zip(headers, re.findall(r"<td[^>]*>(.*?)</td>", cells), strict=True))
        table[run] = {h: int(values[h]) for h in headers if values[h].isdigit()}
    return table


def test_runs_table_credits_each_run_with_the_rows_it_made(runs, tmp_path):
    records = load_records(runs.base)
    table = runs_table(render_audit_report(runs.base, BATCH))
    for run in (runs.first, runs.second):  # rows made: its run_id, whether ok or reused now
        mine = records[records["run_id"] == run]
        assert table[run]["rows made"] == mine["status"].isin(["ok", "reused"]).sum()
        assert table[run]["rows it reused"] == (records["reused_in_run_id"] == run).sum()
    # The second run made or reused every image row: the first run's rows are all reused.
    assert table[runs.first]["rows made"] == table[runs.first]["its images reused here"] > 0
    assert table[runs.second]["rows made"] > 0  # A2's new scene and expansion
    assert table[runs.second]["rows it reused"] > 0

    # A fully reused re-run leaves the tables as the producing run wrote them: that run
    # still shows every image it made, and the re-run, which changed nothing, no row.
    write_catalog(tmp_path, [{"sku": "F1", "image_url": product(tmp_path, "F1", 1)}])
    settings = PipelineSettings(catalog_dir=str(tmp_path / "catalogs"), aspect_ratios=("1:1",))
    first, instance = materialize(tmp_path, settings=settings)
    second, _ = materialize(tmp_path, settings=settings, instance=instance)
    base = str(tmp_path / "data")
    records = load_records(base)
    images = records[records["step"] != "source"]
    assert set(images["status"]) == {"ok"} and set(images["run_id"]) == {first.run_id}
    table = runs_table(render_audit_report(base, BATCH))
    made = table[first.run_id]
    assert made["rows made"] == (records["run_id"] == first.run_id).sum() >= 4  # 4 steps
    assert made["rows failed"] == 0 and second.run_id not in table


def test_costs_a_later_step_and_shared_images(synthetic, monkeypatch):
    made: list[int] = []
    original = thumbnail_data_uri

    def counting(data: bytes, px: int = 160) -> tuple[str, int, int, bool]:
        made.append(len(data))
        return original(data, px)

    monkeypatch.setattr("bria_dagster.lineage.report.thumbnails.thumbnail_data_uri", counting)
    report = write_audit_report(synthetic.base, "batch-1", thumbnail_px=120)
    text = Path(report.path).read_text()
    page = Page(text)
    rows = synthetic.rows

    # The packshot step is found from its table and placed by its lineage (from cutouts).
    assets = [s.asset for s in report.steps]
    assert assets == [
        "catalog_batch",
        "product_cutouts",
        "product_scenes",
        "product_packshots",
        "product_expansions",
    ]
    packshots = report.steps[3]
    assert (packshots.step, packshots.ok, packshots.reused, packshots.backend_calls) == (
        "packshot",
        3,
        1,
        3,
    )
    assert packshots.cost_usd == pytest.approx(0.03) and packshots.list_price_usd == 0.04
    cards = page.attrs("div", **{"data-step": "packshot"})
    assert len(cards) == 4

    # Paid costs add up per step and in total; a reused row cost nothing.
    paid = sum(r["cost_usd"] for r in rows)
    assert (
        report.cost_usd == pytest.approx(paid) == pytest.approx(0.018 + 2 * 0.023 + 2 * 0.04 + 0.03)
    )
    cells = {a["data-cost"] for a in page.attrs("td", **{"data-cost": ""})}
    assert f"{paid:.6f}" in cells and f"{0.018:.6f}" in cells  # total; cutouts (one reused)
    assert "run-0" in page.by_class["run-id"] and "run-1" in page.by_class["reused-in"]

    # One thumbnail per distinct image; each at most 120 px; transparency kept as PNG.
    distinct = {r["image_sha256"] for r in rows if r["image_sha256"]}
    assert len(made) == len(distinct) < len([r for r in rows if r["image_sha256"]])
    shared = page.attrs("img", **{"data-sha256": synthetic.packshot})
    assert len(shared) == 2 and shared[0]["src"] == shared[1]["src"]
    for img in page.attrs("img"):
        assert max(int(img["width"]), int(img["height"])) <= 120
    assert all(
        a["src"].startswith("data:image/png") for a in page.attrs("img", **{"class": "alpha"})
    )
    assert len(page.attrs("img", **{"class": "alpha"})) == 2  # the two cutouts

    # The chain: each cutout holds its scene and its packshots; the failure is under its scene.
    chain = text[text.index('id="sku-0"') : text.index('id="sku-1"')]
    order = [m.group(1) for m in re.finditer(r'class="card \w+" data-step="(\w+)"', chain)]
    assert order == ["source", "remove", "replace", "expand", "expand", "packshot", "packshot"]
    assert "spring" not in {a.get("data-asset") for a in page.attrs("tr")}


def test_thumbnails_reduce_big_jpegs_and_keep_transparency():
    uri, w, h, alpha = thumbnail_data_uri(_bytes(_picture(0, (1600, 1200)), "JPEG"), 160)
    assert (w, h, alpha) == (160, 120, False) and uri.startswith("data:image/jpeg;base64,")
    uri, w, h, alpha = thumbnail_data_uri(_bytes(_picture(0, (300, 600), alpha=True), "PNG"), 160)
    assert (w, h, alpha) == (80, 160, True) and uri.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGBA")
    assert decoded.getchannel("A").getextrema() == (0, 255)
    opaque = Image.new("RGBA", (50, 40), (1, 2, 3, 255))
    assert thumbnail_data_uri(_bytes(opaque, "PNG"), 160)[1:] == (50, 40, False)


def test_metadata_links_the_page_over_http_or_says_how_to_serve_it(runs):
    report = write_audit_report(runs.base, BATCH)
    local = audit_report_metadata(report)
    assert local["audit_report"].path == report.path  # a path: the UI copies it, no link
    hint = local["audit_report_open"].value
    reports = Path(runs.base) / "reports"
    assert f"python -m http.server 8000 --bind 127.0.0.1 --directory {reports}" in hint
    assert f"http://127.0.0.1:8000/product_images/{BATCH}.html" in hint
    assert (reports / "product_images" / f"{BATCH}.html").is_file()

    linked = audit_report_metadata(report, url_base="https://audits.example.org/bria/")
    assert "audit_report_open" not in linked
    assert (
        linked["audit_report"].url == f"https://audits.example.org/bria/product_images/{BATCH}.html"
    )
    assert list(linked)[:2] == ["audit_report", "products"]

    # Every product: what each step made of it (short sha256 and size) or why it failed.
    products = linked["products"].value
    assert products.startswith("**5 of 5 products**, failed products first (3 failed)")
    rows = [line.split(" | ") for line in products.splitlines() if line.startswith("| ")][1:]
    escaped = "A2 \\<b\\>&\"x'"  # markdown-escaped: shown as written
    assert [row[0].removeprefix("| ") for row in rows] == ["A3", "A4", "A5", "A1", escaped]
    by_sku = {row[0].removeprefix("| "): row for row in rows}
    records = load_records(runs.base)
    cutout = records[(records["sku"] == "A1") & (records["step"] == "remove")].iloc[0]
    size = f"{int(cutout['width'])}×{int(cutout['height'])}"
    assert by_sku["A1"][1] == "ok" and by_sku[escaped][1] == "ok"
    assert by_sku["A1"][3] == f"`{cutout['image_sha256'][:10]}` {size} (1 reused)"
    assert "1 failed: FetchFailedError" in by_sku["A4"][2]
    assert by_sku["A3"][1] == "failed (2)" and "1 failed: FalRequestError" in by_sku["A3"][4]
    assert audit_report_metadata(report, products=2)["products"].value.startswith(
        "**2 of 5 products**"
    )


def test_unknown_batch_names_the_batches_there_are(runs, synthetic):
    with pytest.raises(UnknownBatchError) as caught:
        write_audit_report(runs.base, "b9")
    message = str(caught.value)
    assert "'b9'" in message and "b1" in message and "\n" not in message
    assert caught.value.known == ["b1"]
    with pytest.raises(UnknownBatchError, match=r"pipeline 'nope'.*product_images, spring"):
        write_audit_report(synthetic.base, "batch-1", pipeline="nope")


def test_report_goes_to_any_fsspec_location(runs):
    report = write_audit_report(runs.base, BATCH, "memory://audits/b1/report.html")
    assert report.url == "memory://audits/b1/report.html"
    with fsspec.open(report.url, "rb") as fh:
        data = fh.read()
    assert len(data) == report.size_bytes and data.startswith(b"<!DOCTYPE html>")
    fs = fsspec.filesystem("memory")
    assert fs.ls("/audits/b1", detail=False) == ["/audits/b1/report.html"]  # no temp left


# --------------------------------------------------------------------------- the CLI


def test_cli_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "out" / "report.html"
    assert (
        main(["lineage", "report", "--batch", BATCH, "--base", runs.base, "--out", str(out)]) == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (") and "5 products" in line and "10 failures" in line
    assert out.read_text().rstrip().endswith("</html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    main(["lineage", "report", "--batch", BATCH, "--base", runs.base, "--out", str(out)])
    assert capsys.readouterr().out.startswith(f"kept (unchanged) {out} (")


def test_cli_unknown_batch_exits_2_with_one_line(runs, tmp_path, capsys):
    out = tmp_path / "never.html"
    status = main(["lineage", "report", "--batch", "b9", "--base", runs.base, "--out", str(out)])
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    [line] = captured.err.strip().splitlines()
    assert line.startswith("bria-dagster: error: no batch 'b9'") and line.endswith("b1")
    assert not out.exists()


def test_cli_report_defaults_to_the_storage(runs, capsys):
    assert main(["lineage", "report", "--batch", BATCH, "--base", runs.base]) == 0
    written = Path(runs.base) / "reports" / "product_images" / f"{BATCH}.html"
    assert written.is_file() and str(written) in capsys.readouterr().out


# --------------------------------------------------------------------------- in Chromium


class Chromium:
    """Headless Chromium started by the test, driven over the DevTools protocol."""

    def __init__(self, folder: Path) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            pytest.fail(
                f"{CHROMIUM} is missing: the audit report test opens the page in headless "
                "Chromium (Debian: apt-get install chromium)",
                pytrace=False,
            )
        profile = folder / "profile"
        self.log = folder / "chromium.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    f"--user-data-dir={profile}",
                    "--window-size=1280,1600",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its helpers share its process group: stopped together
            )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Chromium did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(active.read_text().splitlines()[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def open(self, url: str, screenshot: Path | None = None) -> dict[str, Any]:
        """Load ``url`` in a new tab; what the page shows once every image settled."""
        return asyncio.run(asyncio.wait_for(self._open(url, screenshot), 60))

    @contextlib.asynccontextmanager
    async def tab(self) -> AsyncIterator[_DevTools]:
        """A new tab's DevTools page (its ``Page`` events on), closed when the block ends."""
        http = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{http}/json/new?about:blank") as response:
                target = await response.json()
            try:
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = _DevTools(ws)
                    await page.call("Page.enable")
                    try:
                        yield page
                    finally:
                        page.stop()
            finally:
                async with session.get(f"{http}/json/close/{target['id']}"):
                    pass

    async def _open(self, url: str, screenshot: Path | None) -> dict[str, Any]:
        async with self.tab() as page:
            loaded = page.event("Page.loadEventFired")
            navigation = await page.call("Page.navigate", url=url)
            assert "errorText" not in navigation, navigation
            await asyncio.wait_for(loaded, 30)
            result = await page.call(
                "Runtime.evaluate",
                expression=_SETTLED_IMAGES,
                awaitPromise=True,
                returnByValue=True,
            )
            assert "exceptionDetails" not in result, result
            state = result["result"]["value"]
            if screenshot is not None:
                shot = await page.call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))
        return state


_SETTLED_IMAGES = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(i => i.complete ? null : new Promise(done => {
    i.addEventListener('load', done);
    i.addEventListener('error', done);
  })));
  return {
    title: document.title,
    readyState: document.readyState,
    naturalWidths: images.map(i => i.naturalWidth),
    shownWidths: images.map(i => i.getBoundingClientRect().width),
    skus: Array.from(document.querySelectorAll('details.sku')).map(d => d.dataset.sku),
    height: document.documentElement.scrollHeight,
    failuresHeading: document.querySelector('#failures h2').textContent,
  };
})()"""


class _DevTools:
    """Commands and events of one DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                future = self.pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                else:
                    future.set_result(data["result"])
            elif data.get("method") in self.waiting:
                self.waiting.pop(data["method"]).set_result(data.get("params", {}))

    def event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        self.waiting[method] = asyncio.get_running_loop().create_future()
        return self.waiting[method]

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(future, 30)

    def stop(self) -> None:
        self.reader.cancel()


def test_page_renders_in_chromium_with_every_image_loaded(runs, chromium, tmp_path):
    report = write_audit_report(runs.base, BATCH, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    state = chromium.open(report.url, screenshot=shot)
    assert state["title"] == f"Audit report: batch {BATCH} (product_images)"
    assert state["readyState"] == "complete"
    assert state["skus"] == ["A1", SKU_HTML, "A3", "A4", "A5"]
    assert state["failuresHeading"] == "Failures (10)"
    assert len(state["naturalWidths"]) == report.images
    assert all(w > 0 for w in state["naturalWidths"]), state["naturalWidths"]
    assert all(w > 0 for w in state["shownWidths"]), state["shownWidths"]  # laid out, visible
    picture = Image.open(shot)
    assert picture.size[0] >= 1000 and len(picture.convert("L").getcolors(1 << 16) or ()) > 20


def test_chromium_check_sees_a_broken_thumbnail(runs, chromium, tmp_path):
    text = render_audit_report(runs.base, BATCH)
    first = re.search(r'src="data:image/(jpeg|png);base64,([^"]+)"', text)
    assert first is not None
    broken = text[: first.start(2)] + "AAAAAAAAAAAAAAAA" + text[first.end(2) :]
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    widths = chromium.open(page.as_uri())["naturalWidths"]
    assert widths[0] == 0 and all(w > 0 for w in widths[1:]), widths
