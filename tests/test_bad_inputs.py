"""A corpus of bad inputs through a full materialization of the pipeline.

One catalog holds one row per kind of bad (and awkward but valid) input; it runs
through catalog_batch -> product_cutouts -> product_scenes -> product_expansions on
the fal protocol test server and on the local engine. The run must succeed (most of its
products fail, so ``checks.fail_run_above`` is raised to 1.0 for it), every catalog
row must end ok or failed with a message naming what was wrong, no row may be lost on
the way, and no request that validation rejects may reach a backend. Whole-file
problems (missing column, unknown extension, header only) and the default loopback
refusal are separate, smaller runs.
"""

from __future__ import annotations

import csv
import io
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
from bria_dagster.client.backends.local import LocalBackend
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import CatalogError
from bria_dagster.steps.catalog import load_catalog
from bria_dagster.steps.settings import CheckSettings

BATCH = "bad"
SIZE = (64, 48)  # small, so that max_pixels=10_000 still admits every expansion
MAX_PIXELS = 10_000
FETCH_MAX_BYTES = 20_000
FETCH_TIMEOUT_S = 0.5
RATIOS = ("1:1", "4:5")
STEPS = ("catalog_batch", "product_cutouts", "product_scenes", "product_expansions")
ENDPOINTS = {
    "product_cutouts": "fal-ai/bria/background/remove",
    "product_scenes": "fal-ai/bria/background/replace",
    "product_expansions": "fal-ai/bria/expand",
}


# --------------------------------------------------------------------------- images


def _photo(seed: int, size: tuple[int, int] = SIZE, category: str = "white_studio") -> Image.Image:
    return Image.open(io.BytesIO(make_product_photo(category, seed, size)[0])).convert("RGB")


def _save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _cmyk_jpeg(seed: int) -> bytes:
    return _save(_photo(seed).convert("CMYK"), "JPEG", quality=90)


def _png16(seed: int) -> bytes:
    gray = np.asarray(_photo(seed).convert("L"), dtype=np.uint16) * 257
    img = Image.fromarray(gray)
    assert img.mode.startswith("I;16")
    return _save(img, "PNG")


def _palette_transparent_png(seed: int) -> bytes:
    pal = _photo(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.info["transparency"] = 0
    return _save(pal, "PNG", transparency=0)


def _animated_gif(seed: int) -> bytes:
    frames = [_photo(seed + i).convert("P") for i in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(_photo(seed), "JPEG", quality=90, exif=exif.tobytes())


def _noise_png(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels, "RGB"), "PNG")


# --------------------------------------------------------------------------- http server


class _Handler(BaseHTTPRequestHandler):
    images: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/slow.jpg":
            time.sleep(2.0)  # far over fetch_timeout_s=0.5
        body = self.images.get(path)
        try:
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout case)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops concurrent connects (1 s SYN retry)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    _Handler.images = {
        "/ok.jpg": make_product_photo("colored", 501, SIZE)[0],
        "/slow.jpg": make_product_photo("colored", 502, SIZE)[0],
    }
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Kind:
    """One catalog row and what must become of it."""

    sku: str
    image_url: str
    fails_at: str | None = None  # None: ok in every step; else the first step table that fails
    error_class: str | None = None
    says: tuple[str, ...] = ()  # fragments the error message must contain
    prompt: str = ""
    seed: str = ""
    aspect_ratios: str = ""

    def ratios(self) -> tuple[str, ...]:
        return tuple(self.aspect_ratios.split(";")) if self.aspect_ratios else RATIOS


def build_corpus(root: Path, http: str) -> list[Kind]:
    """Write the corpus images under ``root/corpus`` and return one Kind per catalog row."""
    images = root / "corpus" / "images"
    images.mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()

    def put(name: str, data: bytes) -> str:
        (images / name).write_bytes(data)
        return f"../images/{name}"

    (outside / "elsewhere.jpg").write_bytes(make_product_photo("white_studio", 90, SIZE)[0])
    good = make_product_photo("white_studio", 1, SIZE)[0]
    truncated = make_product_photo("textured", 2, SIZE)[0]
    oversized = _noise_png((96, 96), 3)  # under max_pixels, over max_bytes
    assert len(oversized) > FETCH_MAX_BYTES
    src, rej, fetch = "catalog_batch", "CatalogRowError", "FetchRefusedError"
    return [
        # valid, some of them awkward: all must succeed
        Kind("good_jpeg", put("good.jpg", good), prompt="on marble"),
        Kind("good_http", f"{http}/ok.jpg", prompt="on oak"),
        Kind("cmyk_jpeg", put("cmyk.jpg", _cmyk_jpeg(11)), prompt="on slate"),
        Kind("png_16bit", put("gray16.png", _png16(12)), prompt="on linen"),
        Kind("palette_alpha_png", put("pal.png", _palette_transparent_png(13)), prompt="on sand"),
        Kind("animated_gif", put("anim.gif", _animated_gif(14)), prompt="on steel"),
        Kind("exif_rotated", put("rot.jpg", _exif_rotated_jpeg(15)), prompt="on paper"),
        Kind(
            "grayscale", put("gray.jpg", _save(_photo(16).convert("L"), "JPEG")), prompt="on wool"
        ),
        Kind("webp", put("img.webp", _save(_photo(17), "WEBP", quality=80)), prompt="on glass"),
        Kind(
            "own_ratio",
            put("ratio.jpg", make_product_photo("colored", 18, SIZE)[0]),
            prompt="on cork",
            seed="7",
            aspect_ratios="16:9",
        ),
        # rejected by catalog validation
        Kind(
            "good_jpeg",
            put("dup.jpg", make_product_photo("colored", 19, SIZE)[0]),
            src,
            rej,
            ("duplicate sku 'good_jpeg'", "row 1", "column sku"),
            prompt="dup",
        ),
        Kind(
            "",
            put("nosku.jpg", make_product_photo("colored", 20, SIZE)[0]),
            src,
            rej,
            ("sku is empty", "column sku"),
        ),
        Kind("empty_url", "", src, rej, ("image_url is empty", "column image_url")),
        Kind(
            "seed_negative", put("s1.jpg", good), src, rej, ("seed -1", "0..2147483647"), seed="-1"
        ),
        Kind(
            "seed_2_31",
            put("s2.jpg", good),
            src,
            rej,
            ("seed 2147483648", "out of range"),
            seed=str(2**31),
        ),
        Kind("seed_abc", put("s3.jpg", good), src, rej, ("'abc'", "not an integer"), seed="abc"),
        Kind(
            "ratio_7_3",
            put("r.jpg", good),
            src,
            rej,
            ("'7:3'", "column aspect_ratios"),
            aspect_ratios="7:3",
        ),
        # refused by the fetch policy
        Kind(
            "ftp_url", "ftp://example.com/a.jpg", src, fetch, ("ftp://example.com/a.jpg", "'ftp'")
        ),
        Kind("javascript_url", "javascript:alert(1)", src, fetch, ("'javascript'",)),
        Kind(
            "localhost_name",
            http.replace("127.0.0.1", "localhost") + "/ok.jpg",
            src,
            fetch,
            ("localhost", "allowed_hosts"),
        ),
        Kind(
            "outside_roots",
            "../../outside/elsewhere.jpg",
            src,
            fetch,
            ("elsewhere.jpg", "outside FetchPolicy.file_roots"),
        ),
        # allowed but unreadable
        Kind("http_404", f"{http}/missing.jpg", src, "FetchFailedError", ("/missing.jpg", "404")),
        Kind(
            "http_timeout", f"{http}/slow.jpg", src, "FetchFailedError", ("/slow.jpg", "timeout_s")
        ),
        Kind(
            "missing_file",
            "../images/nowhere.jpg",
            src,
            "FetchFailedError",
            ("nowhere.jpg", "does not exist"),
        ),
        Kind(
            "oversized",
            put("big.png", oversized),
            src,
            "FetchFailedError",
            ("big.png", "max_bytes"),
        ),
        Kind(
            "bad_data_uri",
            "data:image/png;base64,@@not-base64@@",
            src,
            "FetchFailedError",
            ("base64",),
        ),
        # read but not a usable image
        Kind(
            "not_an_image",
            put("text.jpg", b"<html>not an image</html>\n" * 4),
            src,
            "ImageDecodeError",
            ("text.jpg", "not a decodable image"),
        ),
        Kind(
            "truncated_jpeg",
            put("trunc.jpg", truncated[: len(truncated) // 2]),
            src,
            "ImageDecodeError",
            ("trunc.jpg", "truncated"),
        ),
        Kind(
            "zero_bytes", put("empty.jpg", b""), src, "ImageDecodeError", ("empty.jpg", "0 bytes")
        ),
        Kind(
            "bomb",
            put("bomb.png", _save(Image.new("RGB", (200, 200), "white"), "PNG")),
            src,
            "ImageTooLargeError",
            ("bomb.png", "200x200", "max_pixels"),
        ),
        # valid source, but the default prompt template needs a column it lacks
        Kind(
            "no_prompt",
            put("noprompt.jpg", make_product_photo("colored", 21, SIZE)[0]),
            "product_scenes",
            "RequestValidationError",
            ("missing", "prompt_template"),
        ),
    ]


def write_catalog(folder: Path, kinds: list[Kind], batch: str = BATCH) -> Path:
    path = folder / "catalogs" / f"{batch}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["sku", "image_url", "prompt", "seed", "aspect_ratios"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for k in kinds:
            writer.writerow({f: getattr(k, f) for f in fields})
    return path


# --------------------------------------------------------------------------- running


def settings_for(folder: Path) -> PipelineSettings:
    return PipelineSettings(
        catalog_dir=str(folder / "catalogs"),
        aspect_ratios=RATIOS,
        prompt_template="{sku} {missing}",
        # Most of the corpus' products fail on purpose: the corpus is about the rows.
        checks=CheckSettings(fail_run_above=1.0),
    )


def resource(backend: str, folder: Path, storage: str, **overrides: Any) -> BriaResource:
    config: dict[str, Any] = dict(
        backend=backend,
        journal_path=f"{storage}/single-calls.sqlite",
        file_roots=[str(folder)],
        allowed_hosts=["127.0.0.1"],
        fetch_timeout_s=FETCH_TIMEOUT_S,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_pixels=MAX_PIXELS,
        poll_interval_s=0.02,
        retry_base_delay_s=0.02,
    )
    if backend == "fal":
        config["fal_key"] = "test-key-0"
    config.update(overrides)
    return BriaResource(**config)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """The test's Dagster instance; it must outlive the run result (which holds a weakref)."""
    test_instance = dg.DagsterInstance.ephemeral()
    yield test_instance
    test_instance.dispose()


def materialize(
    instance: dg.DagsterInstance,
    folder: Path,
    bria: BriaResource,
    *,
    batch: str = BATCH,
    settings: PipelineSettings | None = None,
    storage: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One partition through the pipeline; its storage defaults to ``folder / "data"``."""
    pipeline = ProductImagePipeline(
        settings=settings or settings_for(folder), storage=storage or str(folder / "data")
    )
    instance.add_dynamic_partitions(pipeline.partitions_def.name, [batch])
    return dg.materialize(
        pipeline.build_assets(),
        partition_key=batch,
        instance=instance,
        resources={"bria": bria, pipeline.io_manager_key: pipeline.io_manager()},
        raise_on_error=False,
    )


def read(storage: str, asset: str, batch: str = BATCH) -> pd.DataFrame:
    return pd.read_parquet(
        Path(storage) / "tables" / f"product_images__{asset}" / f"{batch}.parquet"
    )


def row_number(record: pd.Series) -> int:
    return int(json.loads(record["catalog_row"])["row_number"])


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every message and cause of the run's step failures, as one string."""
    parts: list[str] = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.step_failure_data.error
        while error is not None:
            parts.append(f"{error.cls_name}: {error.message}")
            error = error.cause
    return "\n".join(parts)


def check_every_row_accounted(kinds: list[Kind], storage: str) -> dict[str, pd.DataFrame]:
    """Each catalog row ends ok or failed, with the expected reason, in every step table."""
    tables = {asset: read(storage, asset) for asset in STEPS}
    numbers = set(range(1, len(kinds) + 1))
    for asset, frame in tables.items():
        assert set(frame["status"]) <= {"ok", "reused", "failed"}, asset
        seen = {row_number(r) for _, r in frame.iterrows()}
        assert seen == numbers, f"{asset} lost catalog rows {sorted(numbers - seen)}"
        failed = frame[frame.status == "failed"]
        assert failed.error_class.notna().all() and (failed.error_message.str.len() > 10).all()
        assert (frame[frame.status != "failed"].image_sha256.notna()).all()

    for number, kind in enumerate(kinds, start=1):
        failed_yet = False
        for asset in STEPS:
            frame = tables[asset]
            rows = frame[[row_number(r) == number for _, r in frame.iterrows()]]
            label = f"{kind.sku or '<empty sku>'} (row {number}) in {asset}"
            assert len(rows), label
            expected_sku = kind.sku or f"<row {number}>"
            assert set(rows.sku) == {expected_sku}, label
            if asset == kind.fails_at:
                failed_yet = True
                assert rows.status.tolist() == ["failed"], (label, rows.error_message.tolist())
                row = rows.iloc[0]
                assert row.error_class == kind.error_class, (label, row.error_message)
                for fragment in kind.says:
                    assert fragment in row.error_message, (label, fragment, row.error_message)
            elif failed_yet:
                assert set(rows.status) == {"failed"}, label
                assert set(rows.error_class) == {"UpstreamFailed"}, label
                assert kind.error_class in rows.error_message.iloc[0], label
            else:
                assert set(rows.status) == {"ok"}, (label, rows.error_message.tolist())
                if asset == "product_expansions":
                    wanted = {f"scene@{r}" for r in kind.ratios()}
                    assert set(rows.variant) == wanted, label
    return tables


def expected_calls(kinds: list[Kind]) -> Counter[str]:
    """Requests that pass validation, per endpoint: the only ones a backend may see."""
    calls: Counter[str] = Counter()
    for kind in kinds:
        if kind.fails_at == "catalog_batch":
            continue
        calls[ENDPOINTS["product_cutouts"]] += 1
        if kind.fails_at == "product_scenes":
            continue
        calls[ENDPOINTS["product_scenes"]] += 1
        calls[ENDPOINTS["product_expansions"]] += len(kind.ratios())
    return calls


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, http_base: str) -> tuple[Path, list[Kind]]:
    root = tmp_path_factory.mktemp("bad-inputs")
    kinds = build_corpus(root, http_base)
    folder = root / "corpus"
    write_catalog(folder, kinds)
    return folder, kinds


def test_corpus_is_broad(corpus):
    _, kinds = corpus
    bad = [k for k in kinds if k.fails_at]
    assert len(bad) >= 20 and len({k.error_class for k in bad}) >= 6


def test_bad_input_corpus_through_the_fal_server(corpus, fal_server, tmp_path, instance):
    folder, kinds = corpus
    storage = str(tmp_path / "fal-data")
    result = materialize(instance, folder, resource("fal", folder, storage), storage=storage)
    assert result.success, failure_text(result)
    tables = check_every_row_accounted(kinds, storage)

    stats = fal_server.stats()
    sent: Counter[str] = Counter()
    for key, count in stats["submissions_per_request"].items():
        sent[key.split(" ")[0]] += count
    assert sent == expected_calls(kinds)
    assert stats["submissions"] == sum(expected_calls(kinds).values())
    assert stats["duplicate_submissions"] == 0 and stats["rejected_submissions"] == 0
    ok = tables["product_expansions"][tables["product_expansions"].status == "ok"]
    assert set(ok.backend) == {"fal"} and ok.request_id.notna().all()
    # the awkward-but-valid sources were normalised, not refused
    sources = tables["catalog_batch"]
    rotated = sources[(sources.sku == "exif_rotated") & (sources.status == "ok")].iloc[0]
    assert (rotated.width, rotated.height) == (SIZE[1], SIZE[0])


def test_bad_input_corpus_on_the_local_engine(corpus, tmp_path, monkeypatch, instance):
    folder, kinds = corpus
    calls: Counter[str] = Counter()
    original = LocalBackend.run

    async def counting_run(backend, request, **kwargs):
        calls[request.endpoint_id] += 1
        return await original(backend, request)

    monkeypatch.setattr(LocalBackend, "run", counting_run)
    storage = str(tmp_path / "local-data")
    result = materialize(instance, folder, resource("local", folder, storage), storage=storage)
    assert result.success, failure_text(result)
    tables = check_every_row_accounted(kinds, storage)
    assert calls == expected_calls(kinds)
    ok = tables["product_cutouts"][tables["product_cutouts"].status == "ok"]
    assert set(ok.backend) == {"local"}


def test_loopback_url_is_refused_by_default(http_base, tmp_path, monkeypatch, instance):
    kinds = [
        Kind(
            "loopback",
            f"{http_base}/ok.jpg",
            "catalog_batch",
            "FetchRefusedError",
            ("127.0.0.1", "loopback", "allowed_hosts"),
        ),
    ]
    write_catalog(tmp_path, kinds)
    calls: list[str] = []
    monkeypatch.setattr(LocalBackend, "run", lambda *a: calls.append("run"))
    storage = str(tmp_path / "data")
    result = materialize(instance, tmp_path, resource("local", tmp_path, storage, allowed_hosts=[]))
    # Its only product failed: the run fails (even at fail_run_above 1.0), saying why,
    # once every step has recorded the row.
    assert not result.success
    text = failure_text(result)
    assert "1 of 1 products of batch 'bad' failed (100%)" in text
    assert "- loopback: FetchRefusedError at product_images/catalog_batch:" in text
    assert "allowed_hosts" in text
    check_every_row_accounted(kinds, storage)
    assert calls == []


def test_missing_required_column_fails_the_batch_naming_file_and_column(tmp_path, instance):
    path = tmp_path / "catalogs" / f"{BATCH}.csv"
    path.parent.mkdir()
    path.write_text("sku,prompt\nA1,on oak\n")
    result = materialize(instance, tmp_path, resource("local", tmp_path, str(tmp_path / "data")))
    assert not result.success
    text = failure_text(result)
    assert "CatalogError" in text and str(path) in text and "image_url" in text
    assert "missing" in text
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["product_images__catalog_batch"]
    # A dg.Failure: the UI shows the reason and its metadata, not a bare traceback.
    metadata = failures[0].step_failure_data.user_failure_data.metadata
    assert metadata["error_class"].value == "CatalogError"
    assert metadata["batch"].value == BATCH


def test_unknown_catalog_extension_is_a_clear_error(tmp_path, instance):
    path = tmp_path / "catalogs" / f"{BATCH}.xlsx"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(CatalogError, match=r"unknown file type '\.xlsx'.*\.csv"):
        load_catalog(path)
    result = materialize(instance, tmp_path, resource("local", tmp_path, str(tmp_path / "data")))
    assert not result.success
    text = failure_text(result)
    assert "CatalogError" in text and repr(BATCH) in text
    assert all(ext in text for ext in (".csv", ".parquet", ".jsonl"))


def test_header_only_catalog_gives_empty_tables(tmp_path, monkeypatch, instance):
    write_catalog(tmp_path, [])
    calls: list[str] = []
    monkeypatch.setattr(LocalBackend, "run", lambda *a: calls.append("run"))
    storage = str(tmp_path / "data")
    result = materialize(instance, tmp_path, resource("local", tmp_path, storage))
    assert result.success, failure_text(result)
    for asset in STEPS:
        assert len(read(storage, asset)) == 0, asset
    assert calls == []


def test_http_rows_share_one_tls_setup_and_do_not_time_each_other_out(
    http_base, tmp_path, monkeypatch, instance
):
    """A batch of http rows loads the CA bundle once, not once per row.

    Building a TLS context (loading the CA bundle) is synchronous work on the event
    loop, done inside the per-fetch timeout: once per row, it serialises the batch and
    eats the fetch_timeout_s of every fetch in flight, so valid rows fail as timeouts.
    """
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting_load(self, *args, **kwargs):
        loads.append(args or kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting_load)
    images = tmp_path / "images"
    images.mkdir()
    kinds = [Kind(f"http_{i}", f"{http_base}/ok.jpg?v={i}", prompt="p") for i in range(10)]
    for i in range(6):
        (images / f"f{i}.jpg").write_bytes(make_product_photo("colored", 600 + i, SIZE)[0])
        kinds.append(Kind(f"file_{i}", f"../images/f{i}.jpg", prompt="p"))
    write_catalog(tmp_path, kinds)
    storage = str(tmp_path / "data")
    settings = PipelineSettings(catalog_dir=str(tmp_path / "catalogs"), steps=())
    result = materialize(
        instance, tmp_path, resource("local", tmp_path, storage), settings=settings
    )
    assert result.success, failure_text(result)
    sources = read(storage, "catalog_batch")
    failed = sources[sources.status == "failed"]
    assert len(loads) <= 1 and failed.empty, (
        f"CA bundle loaded {len(loads)} times for 10 http rows; {len(failed)} of "
        f"{len(sources)} valid rows failed (fetch_timeout_s={FETCH_TIMEOUT_S}): "
        f"{sorted(failed.sku)} {failed.error_message.head(1).tolist()}"
    )
