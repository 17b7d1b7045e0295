"""Batch execution shared by every step: bounded concurrency, dedup, budget, progress.

``run_batch`` takes ``(key, request)`` pairs lazily (a 10,000-row catalog is never
materialised as 10,000 tasks), keeps at most ``max_concurrency`` requests in
flight, sends identical requests once, and yields one :class:`ItemOutcome` per
key as results complete. A failing item ends as an outcome carrying its error;
it never cancels the others.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BriaError, BudgetExceededError, redact
from ..records.schema import NOOP_BACKEND
from .backends.base import Backend, BackendResult
from .contracts import endpoint_for
from .contracts.base import BriaRequest
from .fingerprint import request_fingerprint
from .journal import RequestJournal
from .prices import LIST_PRICES, PriceTable

__all__ = ["BatchProgress", "ItemOutcome", "Usage", "run_batch"]

logger = logging.getLogger("bria_dagster.client.runner")


@dataclass
class Usage:
    """Calls, images and cost per endpoint (the ``bria.<endpoint>.*`` metadata keys of the
    dagster-openai idiom).

    A re-attached request (journaled by an earlier, killed run) counts its images and
    cost but no new call: it was submitted, and paid for, once. A no-op answer (backend
    :data:`~bria_dagster.records.schema.NOOP_BACKEND`: nothing was sent) counts nothing.
    """

    calls: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    cost_usd: dict[str, float] = field(default_factory=dict)
    retries: int = 0

    def add(self, result: BackendResult) -> None:
        if result.backend == NOOP_BACKEND:
            return
        name = endpoint_for(result.endpoint_id).name
        self.calls[name] += 0 if result.reattached else 1
        self.images[name] += len(result.images)
        self.cost_usd[name] = round(self.cost_usd.get(name, 0.0) + result.cost_usd, 6)
        self.retries += len(result.retries)

    def merge(self, other: Usage) -> None:
        """Add ``other``'s figures to these."""
        self.calls.update(other.calls)
        self.images.update(other.images)
        for name, cost in other.cost_usd.items():
            self.cost_usd[name] = round(self.cost_usd.get(name, 0.0) + cost, 6)
        self.retries += other.retries

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(set(self.calls) | set(self.images)):
            out[f"bria.{name}.calls"] = int(self.calls[name])
            out[f"bria.{name}.images"] = int(self.images[name])
            out[f"bria.{name}.cost_usd"] = float(self.cost_usd.get(name, 0.0))
        out["bria.retries"] = self.retries
        return out


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot handed to the progress callback after every completed item."""

    total: int | None
    done: int
    failed: int
    in_flight: int
    deduplicated: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The end of one item: a result, or an error class and message."""

    key: Hashable
    request: BriaRequest
    fingerprint: str
    result: BackendResult | None = None
    error: BriaError | None = None
    shared: bool = False
    """True when this item reused the result of an identical request in the same batch."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_class(self) -> str | None:
        return None if self.error is None else type(self.error).__name__

    @property
    def error_message(self) -> str | None:
        return None if self.error is None else str(self.error)


async def _each(
    items: Iterable[tuple[Hashable, BriaRequest]] | AsyncIterable[tuple[Hashable, BriaRequest]],
) -> AsyncIterator[tuple[Hashable, BriaRequest]]:
    """Items from a plain iterable or from an async one (a stream that grows as it runs)."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _accepts(function: Callable[..., object], name: str) -> bool:
    """Whether ``function`` takes the keyword argument ``name``."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _as_bria_error(exc: Exception) -> BriaError:
    if isinstance(exc, BriaError):
        return exc
    error = BriaError(f"unexpected {type(exc).__name__}: {redact(str(exc))}")
    error.__cause__ = exc
    return error


async def run_batch(
    backend: Backend,
    items: Iterable[tuple[Hashable, BriaRequest]] | AsyncIterable[tuple[Hashable, BriaRequest]],
    *,
    max_concurrency: int = 8,
    budget_usd: float | None = None,
    prices: PriceTable = LIST_PRICES,
    total: int | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
    journal: RequestJournal | None = None,
    slots: asyncio.Semaphore | None = None,
) -> AsyncIterator[ItemOutcome]:
    """Run ``items`` on ``backend``; yield an :class:`ItemOutcome` per key as each completes.

    ``budget_usd`` caps the cost at ``prices`` of the requests *sent*: an item that
    would exceed it fails with :class:`BudgetExceededError` and is not sent.
    ``journal`` is handed to the backend (where accepted paid requests are recorded);
    ``slots``, when given, is a semaphore shared with other batches (the bound of a
    whole session) instead of one of ``max_concurrency`` for this batch alone.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    queue: asyncio.Queue[ItemOutcome | None] = asyncio.Queue()
    waiting: dict[str, list[tuple[Hashable, BriaRequest]]] = {}  # fingerprint -> followers
    slots = slots or asyncio.Semaphore(max_concurrency)
    state = {"done": 0, "failed": 0, "in_flight": 0, "dedup": 0, "cost": 0.0, "committed": 0.0}
    tasks: set[asyncio.Task[None]] = set()
    tells_service_done = _accepts(backend.run, "on_service_done")

    def report() -> None:
        if on_progress is not None:
            on_progress(
                BatchProgress(
                    total=total,
                    done=state["done"],
                    failed=state["failed"],
                    in_flight=state["in_flight"],
                    deduplicated=state["dedup"],
                    cost_usd=round(state["cost"], 6),
                )
            )

    def finish(outcome: ItemOutcome) -> None:
        state["done" if outcome.ok else "failed"] += 1
        queue.put_nowait(outcome)

    async def work(key: Hashable, request: BriaRequest, fingerprint: str) -> None:
        result: BackendResult | None = None
        error: BriaError | None = None
        held = True

        def release() -> None:
            # A request holds its slot while it is at the service; its result download
            # and verification do not keep the next request waiting.
            nonlocal held
            if held:
                held = False
                state["in_flight"] -= 1
                slots.release()

        try:
            if tells_service_done:
                result = await backend.run(request, journal=journal, on_service_done=release)
            else:  # a backend written before on_service_done: its slot ends with the call
                result = await backend.run(request, journal=journal)
        except Exception as exc:
            error = _as_bria_error(exc)
            logger.warning("%s for %s failed: %s", request.endpoint_id, key, error)
        finally:
            release()
        if result is not None:
            state["cost"] += result.cost_usd
        else:
            state["committed"] -= prices.cost_usd(request)
        finish(ItemOutcome(key, request, fingerprint, result=result, error=error))
        for follower_key, follower_request in waiting.pop(fingerprint, []):
            finish(
                ItemOutcome(
                    follower_key,
                    follower_request,
                    fingerprint,
                    result=result,
                    error=error,
                    shared=True,
                )
            )
        report()

    async def feed() -> None:
        try:
            async for key, request in _each(items):
                fingerprint = request_fingerprint(request)
                if fingerprint in waiting:
                    waiting[fingerprint].append((key, request))
                    state["dedup"] += 1
                    continue
                estimate = prices.cost_usd(request)
                if budget_usd is not None and state["committed"] + estimate > budget_usd + 1e-9:
                    finish(
                        ItemOutcome(
                            key,
                            request,
                            fingerprint,
                            error=BudgetExceededError(
                                f"{request.endpoint_id} for {key} would bring the batch to "
                                f"${state['committed'] + estimate:.3f}, over the budget of "
                                f"${budget_usd:.3f}; not sent. Raise budget_usd to continue"
                            ),
                        )
                    )
                    report()
                    continue
                await slots.acquire()
                state["committed"] += estimate
                state["in_flight"] += 1
                waiting[fingerprint] = []
                task = asyncio.create_task(work(key, request, fingerprint))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks))
        finally:
            queue.put_nowait(None)

    feeder = asyncio.create_task(feed())
    try:
        while True:
            outcome = await queue.get()
            if outcome is None:
                break
            yield outcome
        await feeder
    finally:
        if not feeder.done():
            feeder.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(feeder, *list(tasks), return_exceptions=True)
