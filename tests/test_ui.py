"""From the Dagster UI to every product's pictures.

A batch of 16 products (one whose source image is missing) is materialized offline into
a real Dagster instance, then served by a real ``dagster-webserver`` on 127.0.0.1, with
the batch's reports folder served by ``python -m http.server`` and named by
``PipelineSettings.report_url_base``. What the UI shows is read twice: over the
webserver's GraphQL API (the metadata entries the UI renders), and in headless Chromium
(Debian's ``/usr/bin/chromium``, driven over the DevTools protocol as in
``tests/test_report.py``): the partition view of ``audit_report`` lists every product
behind "[Show Markdown]", its ``audit_report`` link opens the report over http with every
product in it, and a ``file://`` link on that http page goes nowhere (why the link must
be http).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from bria_dagster import PipelineSettings
from bria_dagster.testing import reserve_port
from tests.test_pipeline import BATCH, materialize, product, write_catalog
from tests.test_report import Chromium, _DevTools

REPO = Path(__file__).resolve().parent.parent
SKUS = [f"P{i:02d}" for i in range(16)]
MISSING = "P07"  # its source image does not exist: a failed product
STARTUP_S = 60

DEFS = """\
from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline

pipeline = ProductImagePipeline(
    settings=PipelineSettings.model_validate_json({settings!r}), storage={storage!r}
)
defs = pipeline.build_definitions(
    BriaResource(backend="local", file_roots=[{folder!r}]), operations=False
)
"""


@dataclass
class Served:
    folder: Path
    webserver: str
    report_url: str
    report_path: Path


def _start(args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the webserver's code server shares its process group
            **kwargs,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def graphql(server: str, query: str, **variables: Any) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{server}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


ASSET_NODES = "{ assetNodes { assetKey { path } } }"


def _wait_for_webserver(server: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the code location is loaded: its assets are listed over GraphQL."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited: {log.read_text()[-3000:]}")
        try:
            nodes = graphql(server, ASSET_NODES)["assetNodes"]
            if ["product_images", "audit_report"] in [n["assetKey"]["path"] for n in nodes]:
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            pytest.fail(f"dagster-webserver not ready in {STARTUP_S}s: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("ui")
    rows = []
    for i, sku in enumerate(SKUS):
        url = "../images/missing.jpg" if sku == MISSING else product(folder, sku, i)
        rows.append({"sku": sku, "image_url": url})
    write_catalog(folder, rows)
    storage = folder / "data"
    reports = storage / "reports"
    reports.mkdir(parents=True)
    files_port, web_port = reserve_port(), reserve_port()
    files = _start(
        [sys.executable, "-m", "http.server", str(files_port), "--bind", "127.0.0.1"],
        folder / "files.log",
        cwd=reports,
    )
    processes = [files]
    try:
        settings = PipelineSettings(
            catalog_dir=str(folder / "catalogs"),
            steps=("remove",),
            report_url_base=f"http://127.0.0.1:{files_port}/",
        )
        home = folder / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.from_config(str(home))
        materialize(folder, storage=str(storage), settings=settings, instance=instance)
        instance.dispose()
        defs = folder / "defs.py"
        defs.write_text(
            DEFS.format(
                settings=settings.model_dump_json(), storage=str(storage), folder=str(folder)
            )
        )
        webserver = Path(sys.executable).parent / "dagster-webserver"
        env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONPATH=str(REPO))
        log = folder / "webserver.log"
        web = _start(
            [str(webserver), "-h", "127.0.0.1", "-p", str(web_port), "-f", str(defs)],
            log,
            cwd=folder,
            env=env,
        )
        processes.append(web)
        server = f"http://127.0.0.1:{web_port}"
        _wait_for_webserver(server, web, log)
        # What "Skip" on the UI's first-visit dialog does (it would cover the page).
        assert graphql(server, "mutation { setNuxSeen }") == {"setNuxSeen": True}
        yield Served(
            folder=folder,
            webserver=server,
            report_url=f"http://127.0.0.1:{files_port}/product_images/{BATCH}.html",
            report_path=reports / "product_images" / f"{BATCH}.html",
        )
    finally:
        for process in reversed(processes):
            _stop(process)


MATERIALIZATION = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: 1) {
        partition
        metadataEntries {
          label
          __typename
          ... on MarkdownMetadataEntry { mdStr }
          ... on UrlMetadataEntry { url }
          ... on PathMetadataEntry { path }
          ... on IntMetadataEntry { intValue }
        }
      }
    }
  }
}
"""


def shown_metadata(server: str, asset: str) -> dict[str, dict[str, Any]]:
    """The metadata entries of the batch's latest materialization of ``asset``, by label."""
    data = graphql(
        server,
        MATERIALIZATION,
        key={"path": ["product_images", asset]},
        partitions=[BATCH],
    )
    [materialization] = data["assetOrError"]["assetMaterializations"]
    assert materialization["partition"] == BATCH
    return {entry["label"]: entry for entry in materialization["metadataEntries"]}


def table_skus(markdown: str) -> list[str]:
    """The first cell of each body row of the markdown table(s) in ``markdown``."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows if not row.startswith("| sku")]


def test_graphql_shows_an_http_report_link_and_every_product(served):
    report = shown_metadata(served.webserver, "audit_report")
    assert report["audit_report"]["__typename"] == "UrlMetadataEntry"
    assert report["audit_report"]["url"] == served.report_url
    assert "audit_report_open" not in report  # a link: no hint how to serve the page
    assert report["audit_products"]["intValue"] == len(SKUS)
    products = report["products"]["mdStr"]
    assert products.startswith("**16 of 16 products**, failed products first (1 failed)")
    assert table_skus(products) == [MISSING] + [s for s in SKUS if s != MISSING]
    failed_row = products.splitlines()[4]
    assert "failed (2)" in failed_row and "FetchFailedError" in failed_row  # source and cutout

    cutouts = shown_metadata(served.webserver, "product_cutouts")
    preview = cutouts["preview"]["mdStr"]
    assert preview.startswith("**16 of 16 rows**, failures first (1 failed;")
    assert sorted(table_skus(preview)) == SKUS
    assert preview.count("](data:image/jpeg;base64,") == 6  # the rest by sha256 and size

    with urllib.request.urlopen(served.report_url, timeout=30) as response:
        assert response.read() == served.report_path.read_bytes()


# --------------------------------------------------------------------------- in Chromium

_WAIT = """(async () => {
  const deadline = Date.now() + %(ms)d;
  while (Date.now() < deadline) {
    const found = (() => { %(body)s })();
    if (found) return found;
    await new Promise(done => setTimeout(done, 200));
  }
  return null;
})()"""

_METADATA_SHOWN = """
  const cells = Array.from(document.querySelectorAll('td'));
  const label = cells.find(td => td.textContent.trim() === 'products');
  const link = Array.from(document.querySelectorAll('a')).find(a => a.href === %(url)s);
  if (!label || !link) return null;
  return {linkText: link.textContent, target: link.getAttribute('target')};
"""

_OPEN_PRODUCTS = """
  const label = Array.from(document.querySelectorAll('td'))
    .find(td => td.textContent.trim() === 'products');
  const show = Array.from(label.parentElement.querySelectorAll('*'))
    .find(e => e.children.length === 0 && e.textContent.trim() === '[Show Markdown]');
  show.click();
  return true;
"""

_DIALOG_ROWS = """
  const dialog = document.querySelector('[role="dialog"]');
  if (!dialog) return null;
  const rows = Array.from(dialog.querySelectorAll('tbody tr'));
  if (!rows.length) return null;
  const box = dialog.getBoundingClientRect();
  return {
    skus: rows.map(r => r.querySelector('td').textContent.trim()),
    heading: dialog.innerText.split('\\n').find(t => / of \\d+ products/.test(t)),
    visible: box.width > 0 && box.height > 0,
  };
"""

_FOLLOW_LINK = """
  const link = Array.from(document.querySelectorAll('a')).find(a => a.href === %(url)s);
  link.removeAttribute('target');  // the same tab, so this page sees where it leads
  link.click();
  return true;
"""

_FOLLOW_FILE_LINK = """
  const link = document.createElement('a');
  link.href = %(url)s;
  link.textContent = 'the report as a file';
  document.body.appendChild(link);
  link.click();
  return true;
"""

_REPORT_SHOWN = """
  if (document.readyState !== 'complete' || !document.querySelector('details.sku')) return null;
  const images = Array.from(document.images);
  if (!images.every(i => i.complete)) return null;
  return {
    title: document.title,
    skus: Array.from(document.querySelectorAll('details.sku')).map(d => d.dataset.sku),
    decoded: images.filter(i => i.naturalWidth > 0).length,
    images: images.length,
  };
"""


class Tab:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, page: _DevTools) -> None:
        self.page = page

    async def go(self, url: str) -> None:
        loaded = self.page.event("Page.loadEventFired")
        navigation = await self.page.call("Page.navigate", url=url)
        assert "errorText" not in navigation, navigation
        await asyncio.wait_for(loaded, 30)

    async def run(self, body: str, **values: str) -> Any:
        expression = "(() => { %s })()" % (body % {k: json.dumps(v) for k, v in values.items()})
        return await self._evaluate(expression)

    async def wait(self, body: str, ms: int = 30_000, **values: str) -> Any:
        """What ``body`` returns once it is truthy (``None`` after ``ms``)."""
        script = body % {k: json.dumps(v) for k, v in values.items()}
        return await self._evaluate(_WAIT % {"ms": ms, "body": script})

    async def _evaluate(self, expression: str) -> Any:
        result = await self.page.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def location(self) -> str:
        return await self._evaluate("location.href")

    async def screenshot(self, path: Path) -> None:
        shot = await self.page.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


async def _in_a_tab(chromium: Chromium, scenario: Any) -> Any:
    async with chromium.tab() as page:
        return await scenario(Tab(page))


def partition_view(served: Served) -> str:
    asset = "assets/product_images/audit_report"
    return f"{served.webserver}/{asset}?view=partitions&partition={BATCH}"


def test_ui_lists_every_product_and_its_link_opens_the_report(served, chromium, tmp_path):
    shot = tmp_path / "ui_products.png"

    async def scenario(tab: Tab) -> dict[str, Any]:
        await tab.go(partition_view(served))
        link = await tab.wait(_METADATA_SHOWN, url=served.report_url)
        assert link is not None, (await tab.run("return document.body.innerText"))[:3000]
        assert await tab.run(_OPEN_PRODUCTS)
        dialog = await tab.wait(_DIALOG_ROWS)
        await tab.screenshot(shot)
        await tab.page.call("Input.dispatchKeyEvent", type="keyDown", key="Escape")
        await tab.page.call("Input.dispatchKeyEvent", type="keyUp", key="Escape")
        loaded = tab.page.event("Page.loadEventFired")
        assert await tab.run(_FOLLOW_LINK, url=served.report_url)
        await asyncio.wait_for(loaded, 30)
        report = await tab.wait(_REPORT_SHOWN)
        return {"link": link, "dialog": dialog, "report": report, "at": await tab.location()}

    seen = asyncio.run(asyncio.wait_for(_in_a_tab(chromium, scenario), 80))
    assert seen["link"]["linkText"] == served.report_url
    dialog = seen["dialog"]
    assert dialog is not None and dialog["visible"]
    assert dialog["heading"].startswith("16 of 16 products")
    assert sorted(dialog["skus"]) == SKUS and dialog["skus"][0] == MISSING
    picture = Image.open(shot)
    assert picture.size[0] >= 1000 and len(picture.convert("L").getcolors(1 << 16) or ()) > 20

    assert seen["at"] == served.report_url  # the browser followed the link over http
    report = seen["report"]
    assert report is not None and report["title"] == f"Audit report: batch {BATCH} (product_images)"
    assert sorted(report["skus"]) == SKUS
    assert report["images"] > 0 and report["decoded"] == report["images"]


def test_a_file_link_from_the_ui_page_goes_nowhere(served, chromium):
    """Why ``audit_report`` must be an http link: Chromium does not leave the UI's http
    page for a ``file://`` URL (the report exists at that path)."""
    file_url = served.report_path.as_uri()
    assert served.report_path.is_file()

    async def scenario(tab: Tab) -> tuple[str, str]:
        await tab.go(partition_view(served))
        assert await tab.wait(_METADATA_SHOWN, url=served.report_url)
        before = await tab.location()
        assert await tab.run(_FOLLOW_FILE_LINK, url=file_url)
        await asyncio.sleep(2)  # a navigation would have started by now
        return before, await tab.location()

    before, after = asyncio.run(asyncio.wait_for(_in_a_tab(chromium, scenario), 60))
    assert before.startswith(served.webserver)
    assert after == before
