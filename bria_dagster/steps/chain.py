"""Steps run as one stream: each product moves on as soon as its image is ready.

The steps of a chain form a tree by their declared parents (:class:`~bria_dagster.steps.
step.Step`): the chain's first rows (sources, or a stored parent step's table) feed every
step whose parent is not in the chain, and each step's rows feed its children. A cutout's
replace request is sent the moment the cutout is stored, not when the
batch's last cutout is; so a run carries every product through every selected step
without waiting for a step's slowest request (the per-step tail that made small
batches slower than a hand-written loop). Ready requests of the first steps go first (every
product's chain starts early: the shortest batch) until later steps hold a backlog of
``BACKLOG_PER_SLOT`` jobs per request slot; then later steps go first, so
products finish early and few half-done products pile up.

All steps share one bound on requests in flight (the client's session) and one
budget; each step keeps its own records, reuse and report. Every planned job ends
as rows of its step: ok (made by a call, or a no-op recorded without one), reused (from
an earlier run, no call) or failed; a failed row still flows on, so the steps after it
record the sku as ``UpstreamFailed``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..client.client import BriaClient
from ..client.contracts.base import BriaRequest
from ..client.prices import PriceTable
from ..client.runner import ItemOutcome
from ..records.schema import FAILED, NOOP_BACKEND, OK, REUSED
from ..records.store import ImageStore
from ..records.tables import records_to_frame
from .registry import step_named
from .rows import (
    Job,
    StepContext,
    StepReport,
    failed_row,
    noop_row,
    ok_rows,
    reused_rows,
)

__all__ = ["ChainStep", "StepChain"]

logger = logging.getLogger("bria_dagster.steps.chain")

Reuse = Callable[[list[str]], dict[str, list[dict[str, Any]]]]
"""fingerprints -> the output rows of an earlier request with each (absent: none); one
call per group of jobs (:meth:`bria_dagster.records.reuse.ReuseIndex.lookup`)."""

_END = object()

BACKLOG_PER_SLOT = 2
"""Jobs of later steps (waiting or in flight), per request slot, above which the chain
sends later steps' requests before new products' first ones."""

INITIAL_GROUP = 256
"""Catalog rows settled together: their jobs' reuse is looked up in one call."""


@dataclass
class ChainStep:
    """One step of a chain: who runs it, how it plans, what it may reuse."""

    ctx: StepContext
    plan: Callable[[dict[str, Any]], list[Job]]
    reuse: Reuse
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: StepReport = field(default_factory=StepReport)


class StepChain:
    """Runs ``steps`` (each consumes the rows of its declared parent step) as a stream.

    Args:
        steps: the steps, parents before their children; a step whose parent is not
            among them takes the chain's first rows.
        client: the client (its session bounds requests in flight; its prices and budget).
        store: where input images are read and output images written.
        journal: the pipeline's request journal file.
        log: progress lines (every few seconds, and at the end of each step).
    """

    def __init__(
        self,
        steps: list[ChainStep],
        client: BriaClient,
        store: ImageStore,
        *,
        journal: str | None = None,
        log: Callable[[str], None] = logger.info,
    ) -> None:
        if not steps:
            raise ValueError("a chain needs at least one step")
        self.steps = steps
        names = [step.ctx.step for step in steps]
        parents = [step_named(name).parent for name in names]
        self._roots = [i for i, parent in enumerate(parents) if parent not in names]
        self._children = [
            [i for i, parent in enumerate(parents) if parent == name] for name in names
        ]
        self.client = client
        self.store = store
        self.journal = journal
        self.log = log
        self.prices: PriceTable = client.prices
        self._lock = threading.RLock()
        self._keys = itertools.count()
        self._pending: dict[int, tuple[int, Job]] = {}
        self._ready: list[deque[int]] = [deque() for _ in steps]
        self._outstanding = 0
        self._initial: Iterator[dict[str, Any]] = iter(())
        self._initial_done = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_log = 0.0
        self._started = time.perf_counter()
        self._queued = [0] * len(steps)  # jobs sent or waiting, per step
        self._backlog = BACKLOG_PER_SLOT * client.max_concurrency
        self._done_through = -1  # the last step known complete (with every step before it)
        self._complete: queue.Queue[int] = queue.Queue()

    # -- the run --------------------------------------------------------------------------

    def run(self, parents: Iterable[dict[str, Any]]) -> list[tuple[pd.DataFrame, StepReport]]:
        """Carry ``parents`` (the rows the first steps take) through every step.

        Returns each step's record table and report, in step order.
        """
        return [(frame, report) for _, frame, report in self.stream(parents)]

    def stream(
        self, parents: Iterable[dict[str, Any]]
    ) -> Iterator[tuple[int, pd.DataFrame, StepReport]]:
        """:meth:`run`, yielding each step's ``(index, table, report)`` as soon as the step
        is complete (no job of it or of a step before it is pending), while later steps
        go on: the caller stores and checks a finished step's table meanwhile.

        Interrupted (or closed) while the batch runs, it stops the batch the way a
        terminated run does (submits in flight land in the journal) and re-raises.
        """
        self._started = time.perf_counter()
        self._initial = iter(parents)
        call = self.client.start_batch(self._requests(), self._on_outcome, journal=self.journal)
        emitted = 0
        try:
            while emitted < len(self.steps) and not call.done():
                try:
                    complete = self._complete.get(timeout=0.25)
                except queue.Empty:
                    continue
                while emitted <= complete:
                    yield emitted, *self._finish(emitted)
                    emitted += 1
            call.result()  # the batch's own error, if it ended with one
            while emitted < len(self.steps):
                yield emitted, *self._finish(emitted)
                emitted += 1
        except BaseException:
            call.stop()
            raise
        self._log_progress(final=True)

    def _finish(self, level: int) -> tuple[pd.DataFrame, StepReport]:
        step = self.steps[level]
        with self._lock:
            rows = list(step.rows)
        report = step.report
        frame = records_to_frame(sorted(rows, key=lambda r: (r["sku"], r["variant"])))
        report.ok = int((frame["status"] == OK).sum())
        report.failed = int((frame["status"] == FAILED).sum())
        report.reused = int((frame["status"] == REUSED).sum())
        report.noop = int(((frame["status"] == OK) & (frame["backend"] == NOOP_BACKEND)).sum())
        report.calls = sum(report.usage.calls.values())
        report.cost_usd = sum(report.usage.cost_usd.values())
        report.duration_s = time.perf_counter() - self._started
        return frame, report

    def _note_complete(self) -> None:
        """Under the lock: tell :meth:`stream` about steps that just became complete."""
        if not self._initial_done:
            return
        level = self._done_through
        while level + 1 < len(self.steps) and self._queued[level + 1] == 0:
            level += 1
        if level > self._done_through:
            self._done_through = level
            self._complete.put(level)

    async def _requests(self) -> AsyncIterator[tuple[int, BriaRequest]]:
        """Ready requests (see :meth:`_next_ready`); ends once every sent request is settled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()  # before looking: a settle from now on wakes us again
            with self._lock:
                key = self._next_ready()
                while key is None and not self._initial_done:
                    group = list(itertools.islice(self._initial, INITIAL_GROUP))
                    following = next(self._initial, _END)  # known at once: the first step
                    if following is _END:  # may be complete long before the batch is
                        self._initial_done = True
                    else:
                        self._initial = itertools.chain([following], self._initial)
                    for root in self._roots:
                        self._settle(root, group)
                    self._note_complete()
                    key = self._next_ready()
                if key is None and self._initial_done and self._outstanding == 0:
                    return
                if key is not None:
                    self._outstanding += 1
                    _, job = self._pending[key]
            if key is None:
                await self._wake.wait()
                continue
            # The input is read only now, when its request is sent (not while it waits).
            data = self.store.get(job.parent["image_sha256"])
            assert job.request is not None
            yield key, job.request.model_copy(update={"image_url": data})

    def _next_ready(self) -> int | None:
        """Earlier steps first (each product's remaining chain starts as early as it can:
        the shortest batch), unless the later steps (those after the first rows) already
        hold ``backlog`` jobs: then later steps first, so half-done products do not pile
        up."""
        backlog = sum(n for i, n in enumerate(self._queued) if i not in self._roots)
        levels = self._ready if backlog < self._backlog else reversed(self._ready)
        for ready in levels:
            if ready:
                return ready.popleft()
        return None

    # -- settling jobs --------------------------------------------------------------------

    def _settle(self, level: int, parents: list[dict[str, Any]]) -> None:
        """Plan ``parents``' jobs in step ``level``: record what needs no call (failures,
        reuse: looked up once for the group) and queue the rest."""
        if not parents:
            return
        step = self.steps[level]
        jobs = [job for parent in parents for job in step.plan(parent)]
        earlier = step.reuse(
            [j.fingerprint for j in jobs if j.request is not None and j.fingerprint]
        )
        settled: list[dict[str, Any]] = []
        for job in jobs:
            if job.request is None:
                error = job.error
                settled.append(
                    failed_row(
                        step.ctx,
                        job,
                        job.error_class or (type(error).__name__ if error else "BriaError"),
                        str(error) if error else "no request could be built",
                    )
                )
                continue
            rows = earlier.get(job.fingerprint or "")
            if rows and all(self.store.exists(r["image_sha256"], r["content_type"]) for r in rows):
                settled.extend(reused_rows(step.ctx, job, rows))
                continue
            if job.noop is not None:  # recorded, not sent: no call, no estimate, no budget
                settled.append(noop_row(step.ctx, job))
                continue
            key = next(self._keys)
            self._pending[key] = (level, job)
            self._ready[level].append(key)
            self._queued[level] += 1
            step.report.estimated_cost_usd += self.prices.cost_usd(job.request)
        self._emit(level, settled)

    def _emit(self, level: int, rows: list[dict[str, Any]]) -> None:
        """Finished rows of step ``level``; its children plan from them at once."""
        self.steps[level].rows.extend(rows)
        for child in self._children[level]:
            self._settle(child, rows)

    def _on_outcome(self, outcome: ItemOutcome) -> None:
        """A request came back (runs in a worker thread: storing images takes time)."""
        level, job = self._pending[int(outcome.key)]  # type: ignore[call-overload]
        step = self.steps[level]
        result = outcome.result
        if result is None:
            rows = [
                failed_row(
                    step.ctx, job, outcome.error_class or "BriaError", outcome.error_message or ""
                )
            ]
        else:
            rows = ok_rows(step.ctx, job, result, self.store, self.prices, shared=outcome.shared)
        with self._lock:
            del self._pending[int(outcome.key)]  # type: ignore[call-overload]
            if result is not None:
                step.report.images_written += len(rows)
                if not outcome.shared:
                    step.report.usage.add(result)
            self._emit(level, rows)
            self._outstanding -= 1
            self._queued[level] -= 1
            self._note_complete()
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        self._log_progress()

    def _log_progress(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_log < 5:
            return
        self._last_log = now
        with self._lock:
            parts = [
                f"{s.ctx.step}: {len(s.rows)} rows, {sum(s.report.usage.calls.values())} calls"
                for s in self.steps
            ]
            waiting = sum(len(r) for r in self._ready)
            in_flight = self._outstanding
        self.log("; ".join(parts) + f"; {in_flight} in flight, {waiting} waiting")
