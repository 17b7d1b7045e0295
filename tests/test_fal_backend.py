"""FalBackend through the UNMODIFIED fal-client against the fal protocol server."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bria_dagster.client.backends.fal import FalBackend
from bria_dagster.client.contracts.expand import ExpandRequest
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.contracts.replace import ReplaceBackgroundRequest
from bria_dagster.client.fingerprint import request_fingerprint
from bria_dagster.client.images import to_data_uri
from bria_dagster.client.journal import RequestJournal
from bria_dagster.client.retry import RetryPolicy
from bria_dagster.client.runner import run_batch
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import FalRequestError, FalServiceError

KEY = "test-key-0"
FAST_RETRY = RetryPolicy(max_attempts=8, base_delay_s=0.02, max_delay_s=0.2)
REPO = Path(__file__).resolve().parents[1]


def photo(seed: int = 0, size: tuple[int, int] = (96, 80)) -> bytes:
    return make_product_photo("white_studio", seed, size)[0]


def backend(**kwargs) -> FalBackend:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("poll_interval_s", 0.02)
    return FalBackend(KEY, **kwargs)


async def test_three_endpoints_return_verified_images(fal_server):
    fal = backend()
    try:
        cut = await fal.run(RemoveBackgroundRequest(image_url=photo()))
        scenes = await fal.run(
            ReplaceBackgroundRequest(
                image_url=cut.images[0].data, prompt="red", num_images=2, seed=5
            )
        )
        wide = await fal.run(
            ExpandRequest(image_url=photo(), canvas_size=(160, 80), aspect_ratio=None)
        )
    finally:
        await fal.aclose()
    assert cut.backend == "fal" and cut.request_id and cut.cost_usd == 0.018
    rgba = Image.open(io.BytesIO(cut.images[0].data))
    assert rgba.mode == "RGBA" and rgba.size == (96, 80)
    assert len(scenes.images) == 2 and scenes.seed == 5 and scenes.cost_usd == pytest.approx(0.046)
    assert (wide.images[0].width, wide.images[0].height) == (160, 80)
    stats = fal_server.stats()
    assert stats["submissions"] == 3 and stats["billed_cost_usd"] == pytest.approx(0.104)


async def test_sync_mode_outputs_are_decoded_data_uris(fal_server):
    fal = backend()
    try:
        result = await fal.run(RemoveBackgroundRequest(image_url=photo(), sync_mode=True))
    finally:
        await fal.aclose()
    assert result.response.image.url.startswith("data:image/png")
    assert result.images[0].url is None and result.images[0].width == 96
    assert fal_server.stats()["file_gets"] == 0


async def test_a_call_is_four_requests_on_the_status_stream(fal_server):
    """submit, one status stream for the whole wait, result, download; sync_mode: three."""
    fal_server.configure(latency=0.3)
    fal = backend()
    try:
        for i in range(3):
            await fal.run(RemoveBackgroundRequest(image_url=photo(i)))
        inline = await fal.run(RemoveBackgroundRequest(image_url=photo(9), sync_mode=True))
    finally:
        await fal.aclose()
    assert fal_server.stats()["requests_by_op"] == {
        "submit": 4,
        "stream": 4,
        "result": 4,
        "file": 3,
    }
    assert inline.attempts == 3 and inline.retries == []


async def test_without_a_status_stream_the_client_polls(fal_server):
    fal_server.configure(latency=0.3, status_stream=False)
    fal = backend()
    try:
        results = [await fal.run(RemoveBackgroundRequest(image_url=photo(i))) for i in range(3)]
    finally:
        await fal.aclose()
    assert all(r.images for r in results)
    requests = fal_server.stats()["requests_by_op"]
    assert requests["stream"] == 1  # learnt once: this backend polls from then on
    assert requests["status"] >= 3 and requests["submit"] == 3
    assert sum(r.attempts for r in results) == sum(requests.values())


async def test_status_streams_beyond_the_cap_poll(fal_server):
    """Streams hold a connection each for the whole wait: past max_status_streams, poll."""
    fal_server.configure(latency=0.4)
    fal = backend(max_connections=8, max_status_streams=2)
    items = [(i, RemoveBackgroundRequest(image_url=photo(i))) for i in range(6)]
    try:
        outcomes = [o async for o in run_batch(fal, items, max_concurrency=6)]
    finally:
        await fal.aclose()
    assert all(o.ok for o in outcomes)
    requests = fal_server.stats()["requests_by_op"]
    assert requests["stream"] == 2 and requests["status"] >= 4
    assert FalBackend(KEY, max_connections=10)._queue.max_status_streams == 8  # a fifth free


async def test_a_stream_broken_mid_way_falls_back_to_polls(fal_server):
    fal_server.configure(latency=0.3, rate_stream_cut=1.0)  # cut after the first event
    fal = backend()
    try:
        results = [await fal.run(RemoveBackgroundRequest(image_url=photo(i))) for i in range(2)]
    finally:
        await fal.aclose()
    stats = fal_server.stats()
    assert all(r.images for r in results) and stats["duplicate_submissions"] == 0
    assert stats["requests_by_op"]["stream"] == 2  # a broken stream is tried again next time
    assert stats["requests_by_op"]["status"] >= 2
    assert all(r.retries[0].startswith("status stream: connection error") for r in results)


async def test_large_local_inputs_go_through_fal_upload(fal_server):
    from bria_dagster.testing import point_fal_client_at

    undo = point_fal_client_at(fal_server)  # upload hosts have no env var in fal-client
    fal = backend(inline_max_bytes=100)
    try:
        result = await fal.run(RemoveBackgroundRequest(image_url=photo()))
    finally:
        await fal.aclose()
        undo()
    assert result.images[0].width == 96
    assert fal_server.stats()["uploads"] == 1


async def test_validation_error_is_not_retried_and_shows_fal_detail(fal_server):
    fal = backend()
    not_an_image = to_data_uri(b"this is not an image at all", "image/png")
    try:
        with pytest.raises((FalRequestError, FalServiceError)) as info:
            await fal.run(RemoveBackgroundRequest(image_url=not_an_image))
    finally:
        await fal.aclose()
    assert "image" in str(info.value).lower()
    stats = fal_server.stats()
    assert stats["submissions"] + stats["rejected_submissions"] == 1  # sent once, never again


async def test_transient_faults_are_retried_without_duplicate_submissions(fal_server):
    fal_server.configure(rate_429=0.1, rate_5xx=0.05, rate_drop=0.02, rate_missing_once=0.3)
    fal = backend()
    items = [(i, RemoveBackgroundRequest(image_url=photo(i))) for i in range(30)]
    outcomes = []
    try:
        async for outcome in run_batch(fal, items, max_concurrency=8):
            outcomes.append(outcome)
    finally:
        await fal.aclose()
    assert [o.error_message for o in outcomes if not o.ok] == []
    assert len(outcomes) == 30
    stats = fal_server.stats()
    assert stats["duplicate_submissions"] == 0 and stats["distinct_requests"] == 30
    assert sum(stats["faults"].values()) > 0
    assert sum(len(o.result.retries) for o in outcomes if o.result) > 0


async def test_timeout_cancels_the_request(fal_server):
    fal_server.configure(latency=5.0)
    fal = backend(request_timeout_s=0.5)
    try:
        with pytest.raises(FalServiceError, match="cancelled"):
            await fal.run(RemoveBackgroundRequest(image_url=photo()))
    finally:
        await fal.aclose()
    assert fal_server.stats()["cancel_calls"] == 1


async def test_task_cancellation_cancels_the_request(fal_server):
    fal_server.configure(latency=5.0)
    fal = backend()
    task = asyncio.create_task(fal.run(RemoveBackgroundRequest(image_url=photo())))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if fal_server.stats()["submissions"]:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fal.aclose()
    assert fal_server.stats()["cancel_calls"] == 1


async def test_batch_bounds_concurrency_reports_progress_and_isolates_failures(fal_server):
    fal_server.configure(latency=0.1)
    fal = FalBackend("test-key-batch", retry=FAST_RETRY, poll_interval_s=0.02)  # own key
    bad = to_data_uri(b"garbage", "image/png")
    items = [(i, RemoveBackgroundRequest(image_url=photo(i))) for i in range(12)]
    items.append(("bad", RemoveBackgroundRequest(image_url=bad)))
    progress = []
    outcomes = {}
    try:
        async for outcome in run_batch(fal, items, max_concurrency=3, on_progress=progress.append):
            outcomes[outcome.key] = outcome
    finally:
        await fal.aclose()
    assert len(outcomes) == 13
    assert not outcomes["bad"].ok and outcomes["bad"].error_class in {
        "FalRequestError",
        "FalServiceError",
    }
    assert all(outcomes[i].ok for i in range(12))
    assert fal_server.stats()["max_in_progress_by_key"]["test-key-batch"] <= 3
    assert max(p.in_flight for p in progress) <= 3
    last = progress[-1]
    assert (last.done, last.failed) == (12, 1)
    assert last.cost_usd == pytest.approx(12 * 0.018)


async def test_identical_requests_in_a_batch_are_sent_once(fal_server):
    fal = backend()
    same = photo(7)
    items = [(i, RemoveBackgroundRequest(image_url=same)) for i in range(5)]
    try:
        outcomes = [o async for o in run_batch(fal, items, max_concurrency=5)]
    finally:
        await fal.aclose()
    assert len(outcomes) == 5 and all(o.ok for o in outcomes)
    assert sum(o.shared for o in outcomes) == 4
    assert fal_server.stats()["submissions"] == 1


class SlowJournal(RequestJournal):
    """A journal whose commits take 50 ms (a far Postgres): accepted ids pile up unless
    the backend bounds them. Each commit records how many submissions fal had accepted
    that were not journaled yet (this one included): what a SIGKILL now would pay twice."""

    def __init__(self, path: Path, server) -> None:
        super().__init__(path)
        self.server = server
        self.journaled = 0
        self.gaps: list[int] = []

    def accepted(self, fingerprint: str, endpoint_id: str, request_id: str) -> None:
        time.sleep(0.05)
        self.gaps.append(self.server.stats()["submissions"] - self.journaled)
        super().accepted(fingerprint, endpoint_id, request_id)
        self.journaled += 1


async def test_unjournaled_submits_are_bounded_while_polls_stay_concurrent(fal_server, tmp_path):
    fal_server.configure(latency=0.5)
    journal = SlowJournal(tmp_path / "journal.sqlite", fal_server)
    fal = backend(journal=journal, max_unjournaled_submits=3)
    items = [(i, RemoveBackgroundRequest(image_url=photo(i))) for i in range(16)]
    try:
        outcomes = [o async for o in run_batch(fal, items, max_concurrency=16)]
    finally:
        await fal.aclose()
        journal.close()
    assert all(o.ok for o in outcomes) and len(outcomes) == 16
    assert max(journal.gaps) == 3  # reached, never exceeded
    stats = fal_server.stats()
    assert stats["submissions"] == 16 and journal.journaled == 16
    # The jobs themselves still ran all at once: only the submit round trips were bounded.
    assert stats["max_outstanding_by_key"][KEY] > 3
    with pytest.raises(ValueError, match="max_unjournaled_submits"):
        FalBackend(KEY, max_unjournaled_submits=0)


async def test_journal_reattaches_instead_of_resubmitting(fal_server, tmp_path):
    fal_server.configure(latency=1.0)
    journal = tmp_path / "journal.sqlite"
    request = RemoveBackgroundRequest(image_url=photo(3))
    first = backend(journal=RequestJournal(journal))
    task = asyncio.create_task(first.run(request))
    fingerprint = request_fingerprint(request)
    for _ in range(500):  # until the accepted id is journaled
        await asyncio.sleep(0.01)
        if first.journal.get(fingerprint) is not None:
            break
    # A second process (here: a second backend on the same journal) starts while the
    # first one's request is accepted and pending, as after a crash.
    second = backend(journal=RequestJournal(journal))
    try:
        result = await second.run(request)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.aclose()
        await second.aclose()
    assert result.reattached
    stats = fal_server.stats()
    assert stats["submissions"] == 1
    # Both followed the request on its status stream; the re-attach checked its status first.
    assert stats["requests_by_op"]["stream"] == 2 and stats["requests_by_op"]["status"] == 1


async def test_the_journal_given_to_run_is_the_one_used(fal_server, tmp_path):
    given = RequestJournal(tmp_path / "given.sqlite")
    request = RemoveBackgroundRequest(image_url=photo(4))
    fingerprint = request_fingerprint(request)
    fal = backend()  # its own journal is an in-memory one
    other = backend()
    try:
        result = await fal.run(request, journal=given)
        again = await other.run(request, journal=given)  # as a re-run would
    finally:
        await fal.aclose()
        await other.aclose()
    assert given.get(fingerprint).request_id == result.request_id
    assert fal.journal.get(fingerprint) is None
    assert again.reattached and again.request_id == result.request_id
    stats = fal_server.stats()
    assert stats["submissions"] == 1
    # The re-attach found it finished: one status call, no stream, then the result.
    assert stats["requests_by_op"] == {
        "submit": 1,
        "stream": 1,
        "status": 1,
        "result": 2,
        "file": 2,
    }


def test_sigkill_mid_batch_then_rerun_never_resubmits(fal_server, tmp_path):
    fal_server.configure(latency=0.4)
    journal = tmp_path / "journal.sqlite"
    env = {**os.environ, **fal_server.env(KEY), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tests" / "fal_batch_worker.py"), str(journal), "24"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    # Kill while 8 accepted requests are in progress and journaled. (A kill during the
    # submit round trip itself, before fal's answer arrives, cannot be recovered without
    # an idempotency key on fal's side: README, "Going to production".)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and fal_server.stats()["submissions"] >= 8:
            with sqlite3.connect(journal) as db:
                journaled = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            if journaled == fal_server.stats()["submissions"]:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = fal_server.stats()
    assert 0 < before["submissions"] < 24, before
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.strip().endswith("DONE 24 0")
    after = fal_server.stats()
    assert after["duplicate_submissions"] == 0
    assert after["distinct_requests"] == 24 and after["submissions"] == 24
    assert "reattached=True" in rerun.stdout


async def test_the_key_never_leaks(fal_server, caplog, tmp_path):
    secret = "sk-live-ABCDEF0123456789:SECRETSECRETSECRET99"
    caplog.set_level(logging.DEBUG)
    fal_server.configure(rate_5xx=0.5)
    journal = tmp_path / "j.sqlite"
    fal = FalBackend(
        secret, journal=RequestJournal(journal), retry=FAST_RETRY, poll_interval_s=0.02
    )
    texts = [repr(fal)]
    bad = to_data_uri(b"garbage", "image/png")
    try:
        for url in (photo(), bad):
            try:
                result = await fal.run(RemoveBackgroundRequest(image_url=url))
                texts.append(repr(result))
            except Exception as exc:
                texts.append(str(exc) + repr(exc))
    finally:
        await fal.aclose()
    texts.extend(r.getMessage() for r in caplog.records)
    texts.append(journal.read_bytes().decode("latin-1"))
    blob = "\n".join(texts)
    assert secret not in blob
    assert "SECRETSECRETSECRET99" not in blob and "ABCDEF0123456789" not in blob
