"""Retry policy: what is retried, Retry-After, backoff bounds, final errors."""

from __future__ import annotations

import httpx
import pytest

from bria_dagster.client.retry import RetryLog, RetryPolicy, retry_reason, with_retries
from bria_dagster.errors import FalRequestError, RetriesExhaustedError


def http_error(status: int, headers: dict[str, str] | None = None, body: str = "{}"):
    request = httpx.Request("POST", "https://queue.example/fal-ai/bria")
    response = httpx.Response(status, headers=headers or {}, text=body, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status):
    assert retry_reason(http_error(status)) == f"HTTP {status}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_final(status):
    assert retry_reason(http_error(status)) is None


def test_connection_resets_and_timeouts_are_retried():
    assert "connection" in retry_reason(httpx.RemoteProtocolError("reset"))
    assert "timeout" in retry_reason(httpx.ReadTimeout("slow"))
    assert retry_reason(http_error(404), retry_not_found=True) == "HTTP 404"


async def test_retry_after_wins_over_backoff():
    sleeps: list[float] = []
    calls = iter([http_error(429, {"Retry-After": "1.5"}), http_error(503), "ok"])

    async def call():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    log = RetryLog()
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.1, max_delay_s=0.4)
    assert await with_retries("submit", call, policy, log, sleep=fake_sleep) == "ok"
    assert sleeps[0] == 1.5  # the server's Retry-After
    assert 0.05 <= sleeps[1] <= 0.2  # jittered backoff for attempt 2: in [ceiling/2, ceiling]
    assert log.reasons == ["submit: HTTP 429", "submit: HTTP 503"] and log.attempts == 3


def test_backoff_is_capped_and_jittered():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    delays = [policy.delay(10) for _ in range(50)]
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1
    assert policy.delay(1, retry_after=1000) == policy.max_retry_after_s


async def test_422_surfaces_detail_and_is_not_retried():
    attempts = 0

    async def call():
        nonlocal attempts
        attempts += 1
        raise http_error(422, body='{"detail": [{"loc": ["body", "seed"], "msg": "bad seed"}]}')

    with pytest.raises(FalRequestError, match="bad seed") as info:
        await with_retries("submit", call, RetryPolicy(), RetryLog())
    assert attempts == 1 and info.value.status_code == 422


async def test_attempts_run_out():
    async def call():
        raise httpx.ConnectError("refused")

    async def no_sleep(_):
        return None

    with pytest.raises(RetriesExhaustedError, match="3 attempts"):
        await with_retries("status", call, RetryPolicy(max_attempts=3), RetryLog(), sleep=no_sleep)
