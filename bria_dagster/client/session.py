"""One execution's connection to Bria: a backend, its HTTP pool and journals, on one loop.

A :class:`BriaSession` owns a private event loop on a daemon thread. The backend
(and with it fal-client's and our HTTP connection pools) is created on that loop
once and reused by every call, from sync code (:meth:`run`, which works even inside
a running event loop) and async code alike (:meth:`arun`, awaitable from any loop).
A semaphore on the session loop bounds the requests in flight across all calls.

Termination: Dagster delivers a run's termination (the UI's Terminate, SIGINT/SIGTERM to
the run worker) as an exception raised in the step's thread, which is blocked in
:meth:`run` while the requests live on the session loop. :meth:`run` then cancels the
call on the session loop, so it stops sending new requests and lets every submit in
flight land in the journal (the backend's ``on_terminate`` decides what happens to
accepted requests), waits for that up to ``grace_s`` seconds, and re-raises.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from .backends.base import Backend
from .journal import RequestJournal, open_journal

__all__ = ["BriaSession", "SessionCall"]

T = TypeVar("T")
logger = logging.getLogger("bria_dagster.client.session")


class BriaSession:
    """A backend on its own event loop thread. Close it with :meth:`close`.

    Args:
        make_backend: builds the backend; called once, on the session loop.
        max_concurrency: requests in flight at once across every call of the session.
        grace_s: how long :meth:`run`, interrupted, waits for its call to wind down.
    """

    def __init__(
        self,
        make_backend: Callable[[], Backend],
        *,
        max_concurrency: int,
        grace_s: float = 20.0,
    ) -> None:
        self.grace_s = grace_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bria-session", daemon=True
        )
        self._thread.start()
        self._journals: dict[str, RequestJournal] = {}
        self._closed = False

        async def start() -> tuple[Backend, asyncio.Semaphore]:
            return make_backend(), asyncio.Semaphore(max_concurrency)

        try:
            self.backend, self.slots = self.run(start())
        except BaseException:
            self._stop()
            raise

    def journal(self, url: str | None, *, setting: str = "journal_url") -> RequestJournal | None:
        """The journal at ``url`` (a path, ``sqlite:///``, ``postgresql://``), opened once
        per session (``None``: the backend's own). ``setting`` names where ``url`` came from
        in the error raised when it cannot be opened."""
        if url is None:
            return None
        if url not in self._journals:
            self._journals[url] = open_journal(url, setting=setting)
        return self._journals[url]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the session loop and wait for it (blocking this thread).

        Interrupted while waiting (a ``KeyboardInterrupt``, Dagster's
        ``DagsterExecutionInterruptedError``), it cancels the coroutine's task, waits up to
        ``grace_s`` for it to wind down, and re-raises the interruption.
        """
        return self.start(coroutine).result()

    def start(self, coroutine: Coroutine[Any, Any, T]) -> SessionCall[T]:
        """Start ``coroutine`` on the session loop; wait for it with :meth:`SessionCall.result`
        (or poll :meth:`SessionCall.done` while doing other work in this thread, and
        :meth:`SessionCall.stop` it if that work is interrupted)."""
        if self._closed:
            coroutine.close()
            raise RuntimeError("this BriaSession is closed")
        return SessionCall(self._loop, coroutine, self.grace_s)

    def arun(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``coroutine`` on the session loop; await the result from any event loop."""
        if self._closed:
            coroutine.close()
            raise RuntimeError("this BriaSession is closed")
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def close(self) -> None:
        """Close the backend (its connection pools) and the journals; stop the loop."""
        if self._closed:
            return
        try:
            self.run(self.backend.aclose())
        finally:
            self._closed = True
            for journal in self._journals.values():
                journal.close()
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


class SessionCall(Generic[T]):
    """A coroutine running on a session's loop, seen from the thread that started it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T], grace_s: float
    ) -> None:
        self._loop = loop
        self._coroutine = coroutine
        self._grace_s = grace_s
        self._ended = threading.Event()
        self._running: list[asyncio.Task[Any]] = []

        async def call() -> T:
            task = asyncio.current_task()
            assert task is not None
            self._running.append(task)
            try:
                return await coroutine
            finally:
                self._ended.set()

        self._future = asyncio.run_coroutine_threadsafe(call(), loop)

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the result; interrupted while waiting, :meth:`stop` and re-raise."""
        try:
            return self._future.result(timeout)
        except BaseException:
            if not self._future.done():
                self.stop()
            raise

    def stop(self) -> None:
        """Cancel the call (it stops sending requests; submits in flight still land in the
        journal) and wait up to the grace period for it to wind down."""
        if self._future.done():
            return
        started = time.monotonic()
        coroutine, running, future, ended = (
            self._coroutine,
            self._running,
            self._future,
            self._ended,
        )

        def cancel() -> None:
            if running:
                running[0].cancel()
            else:  # not started yet: it never will
                future.cancel()
                coroutine.close()
                ended.set()

        self._loop.call_soon_threadsafe(cancel)
        if ended.wait(self._grace_s):
            logger.warning(
                "interrupted: stopped sending requests and wound down in %.1fs",
                time.monotonic() - started,
            )
        else:
            logger.warning(
                "interrupted: still winding down after the %.0fs grace period; leaving",
                self._grace_s,
            )
