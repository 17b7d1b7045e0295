"""One retry layer, counted at the fal test server; bounded connections; no private names.

Every HTTP attempt FalBackend makes is one attempt of :func:`with_retries`, so the server
sees exactly ``max_attempts`` requests for an operation that always fails, whatever the
failure (429 with Retry-After, a 5xx that fal-client would retry itself, a dropped
connection). ``max_connections`` (the resource sets it to ``max_concurrency``) bounds
the connections open at once, and with them the HTTP requests in flight.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bria_dagster.client.backends.fal import FalBackend
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.retry import RetryPolicy
from bria_dagster.client.runner import run_batch
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import RetriesExhaustedError

KEY = "test-key-attempts"
PACKAGE = Path(__file__).resolve().parents[1] / "bria_dagster"
# Every attempt fails: a 429 (Retry-After 0.05 s), a 5xx (half nginx-looking, which
# fal-client retries on its own) or a dropped connection.
ALWAYS_FAILING = dict(rate_429=0.34, rate_5xx=0.33, rate_drop=0.33)


def photo(seed: int = 0) -> bytes:
    return make_product_photo("white_studio", seed, (64, 48))[0]


def backend(max_attempts: int = 3, **kwargs) -> FalBackend:
    retry = RetryPolicy(max_attempts=max_attempts, base_delay_s=0.005, max_delay_s=0.01)
    return FalBackend(KEY, retry=retry, poll_interval_s=0.01, **kwargs)


@pytest.mark.parametrize("max_attempts", [1, 3, 6])
@pytest.mark.parametrize("operation", ["submit", "status", "result", "file", "upload"])
async def test_an_always_failing_operation_gets_max_attempts_http_attempts(
    fal_server, operation, max_attempts
):
    undo = None
    kwargs = {}
    if operation == "upload":
        from bria_dagster.testing import point_fal_client_at

        undo = point_fal_client_at(fal_server)  # the upload hosts have no env var
        kwargs["inline_max_bytes"] = 100
    # status: a server without the status stream, so the client polls.
    fal_server.configure(fault_ops=operation, status_stream=operation != "status", **ALWAYS_FAILING)
    fal = backend(max_attempts, **kwargs)
    try:
        with pytest.raises(RetriesExhaustedError, match=f"after {max_attempts} attempts"):
            await fal.run(RemoveBackgroundRequest(image_url=photo()))
    finally:
        await fal.aclose()
        if undo is not None:
            undo()
    stats = fal_server.stats()
    # Exactly max_attempts: no second retry layer underneath ours, and ours does retry.
    assert stats["requests_by_op"][operation] == max_attempts, stats["requests_by_op"]
    assert sum(stats["faults_by_op"].values()) == max_attempts
    if operation == "upload":
        assert stats["submissions"] == 0
    elif operation == "submit":
        assert stats["submissions"] == 0 and stats["duplicate_submissions"] == 0
    else:
        assert stats["submissions"] == 1


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_an_always_failing_status_stream_is_tried_once_then_polled(fal_server, max_attempts):
    """A stream is one attempt, never retried: polls (retried per policy) take over."""
    fal_server.configure(fault_ops="stream", **ALWAYS_FAILING)
    fal = backend(max_attempts)
    try:
        result = await fal.run(RemoveBackgroundRequest(image_url=photo()))
    finally:
        await fal.aclose()
    stats = fal_server.stats()
    assert stats["requests_by_op"]["stream"] == 1 and stats["requests_by_op"]["status"] >= 1
    assert result.attempts == sum(stats["requests_by_op"].values())
    assert [r.split(":")[0] for r in result.retries] == ["status stream"]


async def test_attempts_are_counted_per_operation_not_per_request(fal_server):
    """Transient faults on every operation: each attempt the server saw is one we counted."""
    fal_server.configure(fault_ops="submit,status,stream,result,file", rate_5xx=0.3, seed=7)
    fal = backend(max_attempts=6)
    try:
        results = [await fal.run(RemoveBackgroundRequest(image_url=photo(i))) for i in range(8)]
    finally:
        await fal.aclose()
    stats = fal_server.stats()
    requests = sum(stats["requests_by_op"].values())
    assert sum(r.attempts for r in results) == requests  # what we count is what was sent
    assert sum(len(r.retries) for r in results) == sum(stats["faults_by_op"].values()) > 0


@pytest.mark.parametrize(
    ("max_connections", "max_concurrency"),
    [(1, 1), (6, 6), (8, 8), (2, 8)],  # the last: the pool alone holds the line
)
async def test_max_connections_bounds_connections_and_requests_in_flight(
    fal_server, max_connections, max_concurrency
):
    fal_server.configure(latency=0.05)
    fal = backend(max_connections=max_connections)
    items = [(i, RemoveBackgroundRequest(image_url=photo(i))) for i in range(3 * max_concurrency)]
    try:
        outcomes = [o async for o in run_batch(fal, items, max_concurrency=max_concurrency)]
    finally:
        await fal.aclose()
    assert [o.error_message for o in outcomes if not o.ok] == []
    stats = fal_server.stats()
    assert stats["file_gets"] == len(items)  # downloads share the pool too
    assert 1 <= stats["max_open_connections"] <= max_connections
    assert 1 <= stats["max_requests_in_flight"] <= max_connections
    assert stats["max_in_progress_by_key"][KEY] <= max_concurrency
    if max_connections > 1:  # the bound was reached, so the count is a real one
        assert stats["max_open_connections"] > 1


# Private fal-client names: a `_x` attribute or module of fal_client, a `_x` imported from
# it, instance-dict writes, fal's logger, and the internals an earlier version patched.
PRIVATE_FAL_CLIENT = re.compile(
    r"fal_client[.\w]*\._[a-z]"
    r"|from\s+fal_client[.\w]*\s+import\s+(?:\([^)]*?|[^\n(]*?)\b_[a-z]"
    r"|getattr\(\s*fal_client[.\w]*\s*,\s*[\"']_"
    r"|__dict__\s*\["
    r"|getLogger\(\s*[\"']fal_client"
    r"|AsyncBackupDomainTransport|_async_maybe_retry_request"
)


def test_the_pattern_catches_what_it_is_for():
    for text in (
        'client.__dict__["_client"] = pooled',
        'getattr(fal_client.client, "_async_maybe_retry_request", None)',
        "from fal_client.client import AsyncBackupDomainTransport, Completed",
        "from fal_client.client import (\n    Completed,\n    _raise_for_status,\n)",
        'logging.getLogger("fal_client.client").propagate = False',
        "fal_client._headers.USER_AGENT",
    ):
        assert PRIVATE_FAL_CLIENT.search(text), text
    assert not PRIVATE_FAL_CLIENT.search("fal_client.AsyncRequestHandle.from_request_id(x)")
    assert not PRIVATE_FAL_CLIENT.search("from fal_client.auth import fetch_auth_credentials")


def test_the_package_references_no_private_fal_client_name():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for match in PRIVATE_FAL_CLIENT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            hits.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {match.group(0)!r}")
    assert hits == []


async def test_the_pool_raises_httpx_errors_the_retry_layer_knows(fal_server):
    """The pool runs on asyncio's sockets; its failures still arrive as httpx's classes."""
    import httpx

    from bria_dagster.client.backends.http_pool import ShardedPool
    from bria_dagster.client.retry import retry_reason
    from bria_dagster.testing import reserve_port

    async with httpx.AsyncClient(transport=ShardedPool(2)) as http:
        with pytest.raises(httpx.ConnectError) as refused:
            await http.get(f"https://127.0.0.1:{reserve_port()}/")
        fal_server.configure(rate_drop=1.0, fault_ops="file")
        with pytest.raises(httpx.RemoteProtocolError) as dropped:
            await http.get(f"{fal_server.base_url}/files/none")
        fal_server.configure(rate_drop=0.0)
        answered = await http.get(f"{fal_server.base_url}/files/none")  # the pool recovered
    assert retry_reason(refused.value) == "connection error (ConnectError)"
    assert retry_reason(dropped.value) == "connection error (RemoteProtocolError)"
    assert answered.status_code == 404
