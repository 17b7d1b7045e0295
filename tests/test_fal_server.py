"""The fal protocol test server, driven by the real (unmodified) fal_client."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import fal_client
import httpx
import numpy as np
import pytest
from fal_client.client import Completed, FalClientHTTPError, InProgress, Queued
from PIL import Image

from bria_dagster.client.images import parse_data_uri, to_data_uri
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.testing import FalTestServer, Knobs, point_fal_client_at, reserve_port

REMOVE = "fal-ai/bria/background/remove"
REPLACE = "fal-ai/bria/background/replace"
EXPAND = "fal-ai/bria/expand"


@pytest.fixture(scope="module")
def server() -> Iterator[FalTestServer]:
    with FalTestServer() as srv:
        undo = point_fal_client_at(srv)
        try:
            yield srv
        finally:
            undo()


@pytest.fixture
def fal(server: FalTestServer) -> FalTestServer:
    """The shared server with default knobs and zeroed counters."""
    server.configure(**dataclasses.asdict(Knobs()))
    server.reset_stats()
    return server


def _photo(seed: int = 1, size: tuple[int, int] = (160, 120)) -> tuple[bytes, np.ndarray]:
    return make_product_photo("white_studio", seed, size)


def _data_uri(seed: int = 1, size: tuple[int, int] = (160, 120)) -> str:
    return to_data_uri(_photo(seed, size)[0], "image/jpeg")


async def _fetch_image(server: FalTestServer, url: str) -> Image.Image:
    if url.startswith("data:"):
        data, _ = parse_data_uri(url)
    else:
        async with httpx.AsyncClient(verify=server.client_ssl_context()) as http:
            response = await http.get(url)
            response.raise_for_status()
            data = response.content
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def _wait_done(handle: fal_client.AsyncRequestHandle) -> Completed:
    async for status in handle.iter_events(interval=0.02):
        if isinstance(status, Completed):
            return status
    raise AssertionError("iter_events ended without Completed")


async def test_remove_returns_an_rgba_cutout_of_the_input_size(fal: FalTestServer) -> None:
    jpeg, alpha_true = _photo(3, (160, 120))
    client = fal_client.AsyncClient(key="key-a")
    handle = await client.submit(REMOVE, {"image_url": to_data_uri(jpeg, "image/jpeg")})
    status = await _wait_done(handle)
    assert status.error is None and "inference_time" in status.metrics
    result = await handle.get()

    meta = result["image"]
    assert meta["content_type"] == "image/png" and (meta["width"], meta["height"]) == (160, 120)
    img = await _fetch_image(fal, meta["url"])
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (160, 120)
    assert meta["file_size"] > 0
    alpha = np.asarray(img.getchannel("A"), np.float32) / 255
    assert alpha[alpha_true < 0.01].mean() < 0.1  # backdrop is cut away
    assert alpha[alpha_true > 0.99].mean() > 0.8  # product is kept


async def test_handle_from_request_id_reaches_the_same_job(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    handle = await client.submit(REMOVE, {"image_url": _data_uri()})
    http = await client._client  # the client's own httpx client, carrying the key
    again = fal_client.AsyncRequestHandle.from_request_id(http, REMOVE, handle.request_id)
    assert again.response_url == handle.response_url
    assert (await again.get())["image"]["width"] == 160


async def test_replace_with_prompt_from_an_uploaded_input(fal: FalTestServer) -> None:
    jpeg, _ = _photo(4, (128, 96))
    client = fal_client.AsyncClient(key="key-a")
    url = await client.upload(jpeg, "image/jpeg", file_name="shoe.jpg")
    assert url.startswith(fal.base_url + "/files/")

    args = {"image_url": url, "prompt": "a marble table", "num_images": 3, "seed": 7}
    result = await (await client.submit(REPLACE, args)).get()
    assert result["seed"] == 7 and len(result["images"]) == 3
    images = [await _fetch_image(fal, m["url"]) for m in result["images"]]
    assert all(img.size == (128, 96) for img in images)
    assert len({img.tobytes() for img in images}) == 3  # one backdrop per image
    assert fal.stats()["uploads"] == 1


async def test_replace_with_reference_in_sync_mode_returns_data_uris(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    args = {"image_url": _data_uri(5), "ref_image_url": _data_uri(6, (64, 64)), "sync_mode": True}
    result = await (await client.submit(REPLACE, args)).get()
    (meta,) = result["images"]
    assert meta["url"].startswith("data:image/png;base64,")
    assert (await _fetch_image(fal, meta["url"])).size == (160, 120)
    assert isinstance(result["seed"], int)
    assert fal.stats()["file_gets"] == 0


async def test_expand_to_canvas_size_and_to_aspect_ratio(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    source = _data_uri(7, (160, 120))
    sized = await (
        await client.submit(EXPAND, {"image_url": source, "canvas_size": [300, 200]})
    ).get()
    assert (sized["image"]["width"], sized["image"]["height"]) == (300, 200)
    assert (await _fetch_image(fal, sized["image"]["url"])).size == (300, 200)

    placed = {
        "image_url": source,
        "canvas_size": [400, 400],
        "original_image_size": [80, 60],
        "original_image_location": [10, 20],
        "seed": 11,
    }
    result = await (await client.submit(EXPAND, placed)).get()
    assert result["seed"] == 11 and result["image"]["width"] == 400

    ratio = {"image_url": source, "canvas_size": [1000, 1000], "aspect_ratio": "16:9"}
    wide = await (await client.submit(EXPAND, ratio)).get()
    w, h = wide["image"]["width"], wide["image"]["height"]
    assert h == 120 and abs(w / h - 16 / 9) < 0.01  # the ratio wins over canvas_size


async def test_schema_errors_are_rejected_at_submit_without_a_job(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    with pytest.raises(FalClientHTTPError) as missing:
        await client.submit(REMOVE, {"sync_mode": True})
    assert missing.value.status_code == 422
    assert missing.value.message[0]["loc"] == ["body", "image_url"]

    with pytest.raises(FalClientHTTPError) as too_many:
        await client.submit(REPLACE, {"image_url": _data_uri(), "prompt": "x", "num_images": 5})
    assert too_many.value.status_code == 422
    assert too_many.value.message[0]["loc"] == ["body", "num_images"]

    stats = fal.stats()
    assert stats["submissions"] == 0 and stats["rejected_submissions"] == 2


async def test_unreachable_input_fails_the_job_with_a_422_result(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    handle = await client.submit(REMOVE, {"image_url": "https://example.invalid/a.jpg"})
    status = await _wait_done(handle)
    assert status.error is not None and status.error_type == "file_download_error"
    with pytest.raises(FalClientHTTPError) as failed:
        await handle.get()
    assert failed.value.status_code == 422
    assert failed.value.message[0]["loc"] == ["body", "image_url"]

    both = {"image_url": _data_uri(), "prompt": "x", "ref_image_url": _data_uri(2)}
    with pytest.raises(FalClientHTTPError) as ambiguous:
        await (await client.submit(REPLACE, both)).get()
    assert ambiguous.value.status_code == 422

    fal.configure(validate_at_submit=False)
    late = await client.submit(REPLACE, {"image_url": _data_uri(), "prompt": "x", "num_images": 9})
    with pytest.raises(FalClientHTTPError) as out_of_range:
        await late.get()
    assert out_of_range.value.status_code == 422

    stats = fal.stats()
    assert stats["failed"] == 3 and stats["billed_jobs"] == 0 and stats["billed_cost_usd"] == 0


async def test_per_key_limit_keeps_the_excess_in_queue(fal: FalTestServer) -> None:
    fal.configure(max_in_progress=2, latency=0.6)
    key_a = fal_client.AsyncClient(key="key-a")
    key_b = fal_client.AsyncClient(key="key-b")
    uri = _data_uri()
    a_handles = [
        await key_a.submit(REMOVE, {"image_url": uri, "sync_mode": i % 2 == 0}) for i in range(5)
    ]
    b_handles = [await key_b.submit(REMOVE, {"image_url": uri}) for _ in range(2)]

    a_states = [await h.status() for h in a_handles]
    assert sum(isinstance(s, InProgress) for s in a_states) == 2
    assert sorted(s.position for s in a_states if isinstance(s, Queued)) == [0, 1, 2]
    b_states = [await h.status() for h in b_handles]
    assert all(isinstance(s, InProgress) for s in b_states)  # its own limit

    results = await asyncio.gather(*(h.get(interval=0.02) for h in a_handles + b_handles))
    assert all(r["image"]["width"] == 160 for r in results)
    stats = fal.stats()
    assert stats["max_in_progress_by_key"] == {"key-a": 2, "key-b": 2}
    assert stats["max_in_progress_seen"] == 2 and stats["completed"] == 7


async def test_429_carries_retry_after_and_creates_nothing(fal: FalTestServer) -> None:
    fal.configure(rate_429=1.0, retry_after=0.7)
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        response = await http.post(
            f"{fal.base_url}/{REMOVE}",
            json={"image_url": _data_uri()},
            headers={"Authorization": "Key key-a"},
        )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0.7"
    stats = fal.stats()
    assert stats["submissions"] == 0 and stats["faults"]["429"] == 1


async def test_5xx_faults_come_as_ingress_and_as_app_errors(fal: FalTestServer) -> None:
    fal.configure(rate_5xx=1.0, seed=5)
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        responses = [
            await http.get(
                f"{fal.base_url}/{REMOVE}/requests/none/status",
                headers={"Authorization": "Key key-a"},
            )
            for _ in range(16)
        ]
    ingress = [r for r in responses if r.status_code == 502]
    app = [r for r in responses if r.status_code == 503]
    assert ingress and app and len(ingress) + len(app) == 16
    assert all("nginx" in r.text and "x-fal-request-id" not in r.headers for r in ingress)
    assert all("x-fal-request-id" in r.headers and r.json()["detail"] for r in app)
    assert fal.stats()["faults"]["5xx"] == 16


async def test_retried_faults_never_duplicate_a_submission(fal: FalTestServer) -> None:
    fal.configure(rate_429=0.25, rate_drop=0.15, seed=11)
    client = fal_client.AsyncClient(key="key-a")
    handles = [await client.submit(REMOVE, {"image_url": _data_uri(i)}) for i in range(8)]
    results = await asyncio.gather(*(h.get(interval=0.02) for h in handles))
    assert len(results) == 8
    stats = fal.stats()
    assert stats["submissions"] == 8 and stats["duplicate_submissions"] == 0
    assert stats["faults"]["429"] > 0 and stats["faults"]["drop"] > 0
    assert stats["billed_cost_usd"] == pytest.approx(8 * 0.018)


async def test_a_lost_submit_reply_still_creates_and_bills_the_job(fal: FalTestServer) -> None:
    fal.configure(rate_drop_after_submit=1.0)
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(
                f"{fal.base_url}/{REMOVE}",
                json={"image_url": _data_uri()},
                headers={"Authorization": "Key key-a"},
            )
    fal.configure(rate_drop_after_submit=0.0)
    stats = fal.stats()
    assert stats["submissions"] == 1 and stats["faults"]["drop_after_submit"] == 1
    for _ in range(200):  # the job runs although nobody holds its id
        if fal.stats()["billed_jobs"] == 1:
            break
        await asyncio.sleep(0.01)
    assert fal.stats()["billed_cost_usd"] == pytest.approx(0.018)


async def test_only_the_newest_files_are_kept(fal: FalTestServer) -> None:
    fal.configure(max_files=1)
    client = fal_client.AsyncClient(key="key-a")
    first = (await (await client.submit(REMOVE, {"image_url": _data_uri(1)})).get())["image"]
    second = (await (await client.submit(REMOVE, {"image_url": _data_uri(2)})).get())["image"]
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        assert (await http.get(first["url"])).status_code == 404
        assert (await http.get(second["url"])).status_code == 200
    assert fal.stats()["files_evicted"] >= 1


async def test_result_file_missing_once_then_served(fal: FalTestServer) -> None:
    fal.configure(rate_missing_once=1.0)
    client = fal_client.AsyncClient(key="key-a")
    url = (await (await client.submit(REMOVE, {"image_url": _data_uri()})).get())["image"]["url"]
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        first, second = await http.get(url), await http.get(url)
    assert first.status_code == 404 and second.status_code == 200
    assert Image.open(io.BytesIO(second.content)).size == (160, 120)
    stats = fal.stats()
    assert stats["file_gets"] == 2 and stats["faults"]["missing_once"] == 1


async def test_cancel_a_queued_job_never_runs_or_bills(fal: FalTestServer) -> None:
    fal.configure(max_in_progress=1, latency=0.6)
    client = fal_client.AsyncClient(key="key-a")
    running = await client.submit(REMOVE, {"image_url": _data_uri(1)})
    queued = await client.submit(REMOVE, {"image_url": _data_uri(2)})
    assert isinstance(await queued.status(), Queued)
    await queued.cancel()
    status = await queued.status()
    assert isinstance(status, Completed) and status.error_type == "request_cancelled"
    with pytest.raises(FalClientHTTPError) as cancelled:
        await queued.get()
    assert cancelled.value.status_code == 400

    await running.get(interval=0.02)
    with pytest.raises(FalClientHTTPError) as done:
        await running.cancel()
    assert done.value.status_code == 400  # ALREADY_COMPLETED
    stats = fal.stats()
    assert stats["cancelled"] == 1 and stats["billed_jobs"] == 1
    assert stats["billed_cost_usd"] == pytest.approx(0.018)


async def test_key_is_required_and_scopes_requests(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    handle = await client.submit(REMOVE, {"image_url": _data_uri()})
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        anonymous = await http.post(f"{fal.base_url}/{REMOVE}", json={"image_url": "x"})
        other = await http.get(handle.status_url, headers={"Authorization": "Key key-b"})
    assert anonymous.status_code == 401 and "Key" in anonymous.json()["detail"]
    assert other.status_code == 404
    await handle.get()


async def test_stats_count_calls_costs_and_duplicates(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    uri = _data_uri()
    calls = [
        (REMOVE, {"image_url": uri}),
        (REMOVE, {"image_url": uri}),  # the same request again: a duplicate
        (REPLACE, {"image_url": uri, "prompt": "sand", "num_images": 2}),
        (EXPAND, {"image_url": uri, "canvas_size": [200, 200]}),
    ]
    handles = [await client.submit(endpoint, args) for endpoint, args in calls]
    results = [await h.get(interval=0.02) for h in handles]
    await _fetch_image(fal, results[0]["image"]["url"])
    stats = fal.stats()
    assert stats["submissions"] == 4 and stats["distinct_requests"] == 3
    assert stats["duplicate_submissions"] == 1
    assert stats["completed"] == 4 and stats["billed_jobs"] == 4
    assert stats["billed_cost_usd"] == pytest.approx(2 * 0.018 + 2 * 0.023 + 0.04)
    assert stats["status_calls"] >= 4 and stats["result_calls"] == 4 and stats["file_gets"] == 1
    fal.reset_stats()
    assert fal.stats()["submissions"] == 0 and fal.stats()["billed_cost_usd"] == 0


async def test_admin_endpoints(fal: FalTestServer) -> None:
    client = fal_client.AsyncClient(key="key-a")
    await (await client.submit(REMOVE, {"image_url": _data_uri()})).get()
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        stats = (await http.get(f"{fal.base_url}/_test/stats")).json()
        assert stats["submissions"] == 1 and stats["completed"] == 1
        set_knobs = await http.post(
            f"{fal.base_url}/_test/configure", json={"latency": 0.05, "max_in_progress": 3}
        )
        assert set_knobs.status_code == 200 and set_knobs.json()["knobs"]["max_in_progress"] == 3
        bad = await http.post(f"{fal.base_url}/_test/configure", json={"rate_429": 2})
        assert bad.status_code == 400 and "rate_429" in bad.json()["detail"]
        unknown = await http.post(f"{fal.base_url}/_test/configure", json={"colour": 1})
        assert unknown.status_code == 400 and "unknown knob" in unknown.json()["detail"]
        assert (await http.post(f"{fal.base_url}/_test/reset")).status_code == 200
        assert (await http.get(f"{fal.base_url}/_test/stats")).json()["submissions"] == 0
    assert fal.knobs.latency == 0.05 and fal.knobs.max_in_progress == 3


CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import fal_client  # reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST now
    from bria_dagster.engine.synthetic import make_product_photo
    from bria_dagster.client.images import to_data_uri

    async def main():
        jpeg, _ = make_product_photo("colored", 2, (96, 64))
        client = fal_client.AsyncClient()  # FAL_KEY from the environment
        handle = await client.submit(
            "fal-ai/bria/background/remove", {"image_url": to_data_uri(jpeg, "image/jpeg")}
        )
        result = await handle.get(interval=0.02)
        print(json.dumps({"queue": fal_client.client.QUEUE_URL_FORMAT, "result": result}))

    asyncio.run(main())
    """
)


def test_standalone_process_prints_env_and_serves_the_real_client(tmp_path: Path) -> None:
    port = reserve_port()
    ca_out = tmp_path / "ca" / "fal-ca.pem"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bria_dagster.testing.fal_server",
            "--port",
            str(port),
            "--ca-out",
            str(ca_out),
            "--max-in-progress",
            "2",
            "--latency",
            "0.05",
            "--key",
            "proc-key",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout is not None
        env = json.loads(proc.stdout.readline())
        assert env["FAL_RUN_HOST"] == env["FAL_QUEUE_RUN_HOST"] == f"127.0.0.1:{port}"
        assert env["SSL_CERT_FILE"] == str(ca_out) and ca_out.read_text().startswith("-----BEGIN")
        assert env["FAL_KEY"] == "proc-key"

        child_env = {**os.environ, **env, "PYTHONPATH": str(repo)}
        out = subprocess.run(
            [sys.executable, "-c", CLIENT_SCRIPT],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        reply = json.loads(out.stdout.strip().splitlines()[-1])
        assert reply["queue"] == f"https://127.0.0.1:{port}/"
        assert (reply["result"]["image"]["width"], reply["result"]["image"]["height"]) == (96, 64)

        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_out))) as http:
            stats = http.get(f"https://127.0.0.1:{port}/_test/stats").json()
        assert stats["submissions"] == 1 and stats["billed_cost_usd"] == pytest.approx(0.018)
        assert stats["max_in_progress_by_key"] == {"proc-key": 1}
    finally:  # cleanup of the helper server (its SIGTERM exit is not what this tests)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _stream_events(server: FalTestServer, status_url: str, key: str) -> list[dict]:
    """Every status event of a request's status stream, read to its end."""
    from httpx_sse import aconnect_sse

    async with httpx.AsyncClient(verify=server.client_ssl_context()) as http:
        headers = {"Authorization": f"Key {key}"}
        async with aconnect_sse(http, "GET", status_url + "/stream", headers=headers) as source:
            assert source.response.headers["content-type"] == "text/event-stream"
            return [json.loads(event.data) async for event in source.aiter_sse()]


async def _status(server: FalTestServer, status_url: str, key: str) -> dict:
    async with httpx.AsyncClient(verify=server.client_ssl_context()) as http:
        response = await http.get(status_url, headers={"Authorization": f"Key {key}"})
    response.raise_for_status()
    return response.json()


async def test_status_stream_sends_each_status_and_ends_after_completed(
    fal: FalTestServer,
) -> None:
    fal.configure(max_in_progress=1, latency=0.3)
    client = fal_client.AsyncClient(key="key-a")
    first = await client.submit(REMOVE, {"image_url": _data_uri(1)})
    second = await client.submit(REMOVE, {"image_url": _data_uri(2)})
    events = await _stream_events(fal, second.status_url, "key-a")  # returns: the stream ended
    assert [e["status"] for e in events] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert events[0]["queue_position"] == 0 and events[0]["request_id"] == second.request_id
    polled = await _status(fal, second.status_url, "key-a")
    assert events[-1] == polled  # the same status object as the status call's
    assert "inference_time" in events[-1]["metrics"]
    assert await _stream_events(fal, first.status_url, "key-a") == [
        await _status(fal, first.status_url, "key-a")
    ]  # a finished request: one COMPLETED event
    assert fal.stats()["requests_by_op"]["stream"] == 2


async def test_status_stream_keeps_an_idle_connection_alive_with_comments(
    fal: FalTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bria_dagster.testing.fal_server import queue

    monkeypatch.setattr(queue, "KEEPALIVE_S", 0.05)
    fal.configure(latency=0.4)
    handle = await fal_client.AsyncClient(key="key-a").submit(REMOVE, {"image_url": _data_uri()})
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        headers = {"Authorization": "Key key-a"}
        async with http.stream("GET", handle.status_url + "/stream", headers=headers) as response:
            lines = [line async for line in response.aiter_lines()]
    assert lines.count(": keep-alive") >= 3
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["status"] for d in data] == ["IN_PROGRESS", "COMPLETED"]


async def test_status_stream_can_be_absent_or_cut(fal: FalTestServer) -> None:
    handle = await fal_client.AsyncClient(key="key-a").submit(REMOVE, {"image_url": _data_uri()})
    fal.configure(status_stream=False)  # a server without the endpoint
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        missing = await http.get(
            handle.status_url + "/stream", headers={"Authorization": "Key key-a"}
        )
    assert missing.status_code == 404
    fal.configure(status_stream=True, rate_stream_cut=1.0, latency=0.3)
    cut = await fal_client.AsyncClient(key="key-a").submit(REMOVE, {"image_url": _data_uri(2)})
    with pytest.raises(httpx.RemoteProtocolError):
        await _stream_events(fal, cut.status_url, "key-a")
    assert fal.stats()["faults_by_op"] == {"stream:stream_cut": 1}


async def test_a_client_leaving_a_status_stream_is_not_a_server_error(
    fal: FalTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A killed run drops its streams: the job carries on, and the server logs no error
    for the writes it can no longer make (nor for a stream it cut itself)."""
    fal.configure(latency=0.3)
    handle = await fal_client.AsyncClient(key="key-a").submit(REMOVE, {"image_url": _data_uri()})
    async with httpx.AsyncClient(verify=fal.client_ssl_context()) as http:
        headers = {"Authorization": "Key key-a"}
        async with http.stream("GET", handle.status_url + "/stream", headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # leave after the first event, the job still running
    fal.configure(rate_stream_cut=1.0)
    cut = await fal_client.AsyncClient(key="key-a").submit(REMOVE, {"image_url": _data_uri(2)})
    with pytest.raises(httpx.RemoteProtocolError):
        await _stream_events(fal, cut.status_url, "key-a")
    for job in (handle, cut):  # the jobs go on: their last status is written to no one
        await _wait_done(job)
    await asyncio.sleep(0.1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_cpu_per_request_ms_spends_that_cpu_time_on_each_request(tmp_path: Path) -> None:
    """Measured in the server's own process: 40 requests at 25 ms cost about 1 s more CPU
    than 40 at 0 ms."""
    from bria_dagster.testing import FalServerProcess

    server = FalServerProcess(tmp_path, cpu_per_request_ms=25)
    try:
        context = ssl.create_default_context(cafile=str(server.ca))

        def spent(ms: float) -> float:
            server.configure(cpu_per_request_ms=ms)
            with httpx.Client(verify=context) as http:
                before = server.cpu_seconds()
                for _ in range(40):
                    http.get(f"{server.base}/files/none")
                return server.cpu_seconds() - before

        extra = spent(25) - spent(0)
    finally:
        server.stop()
    assert 0.85 <= extra <= 1.3, extra
    with pytest.raises(ValueError, match="cpu_per_request_ms"):
        Knobs().update(cpu_per_request_ms=-1)
