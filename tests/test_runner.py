"""run_batch's concurrency bound: requests at the service, not downloads."""

from __future__ import annotations

import asyncio
import time

from bria_dagster.client.backends.base import BackendResult
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.runner import run_batch


def _result(backend: str, duration_s: float) -> BackendResult:
    return BackendResult(
        endpoint_id="fal-ai/bria/background/remove",
        backend=backend,
        request_id="r",
        response=None,
        images=[],
        seed=None,
        cost_usd=0.0,
        duration_s=duration_s,
    )


def _items(n: int) -> list[tuple[int, RemoveBackgroundRequest]]:
    return [
        (i, RemoveBackgroundRequest(image_url=f"https://example.com/{i}.jpg")) for i in range(n)
    ]


class _SlowDownloads:
    """A backend whose requests spend 0.1 s at the service, then 0.3 s downloading."""

    name = "fake"

    def __init__(self) -> None:
        self.at_service = 0
        self.peak_at_service = 0
        self.started: list[float] = []

    async def run(self, request, *, journal=None, on_service_done=None) -> BackendResult:
        self.started.append(time.monotonic())
        self.at_service += 1
        self.peak_at_service = max(self.peak_at_service, self.at_service)
        await asyncio.sleep(0.1)
        self.at_service -= 1
        if on_service_done is not None:
            on_service_done()
            on_service_done()  # a second call must not free a second slot
        await asyncio.sleep(0.3)
        return _result(self.name, 0.4)

    async def aclose(self) -> None:
        pass


async def test_a_slot_is_free_once_the_service_is_done_not_after_the_download():
    backend = _SlowDownloads()
    progress = []
    outcomes = [
        o
        async for o in run_batch(backend, _items(6), max_concurrency=2, on_progress=progress.append)
    ]
    assert len(outcomes) == 6 and all(o.ok for o in outcomes)
    assert backend.peak_at_service == 2  # the bound holds at the service
    assert max(p.in_flight for p in progress) <= 2
    # The third request went out when the first two left the service (0.1 s), not when
    # their downloads ended (0.4 s).
    assert backend.started[2] - backend.started[0] < 0.25


class _OldBackend:
    """A backend written against the protocol before on_service_done (as
    tests/test_prices.py's PaidNothing is)."""

    name = "old"

    async def run(self, request, *, journal=None) -> BackendResult:
        await asyncio.sleep(0.01)
        return _result(self.name, 0.01)

    async def aclose(self) -> None:
        pass


async def test_a_backend_without_on_service_done_still_runs():
    outcomes = [o async for o in run_batch(_OldBackend(), _items(3), max_concurrency=2)]
    assert sorted(o.key for o in outcomes) == [0, 1, 2] and all(o.ok for o in outcomes)
