"""One execution's connection to Bria: a backend, its HTTP pool and journals, on one loop.

A :class:`BriaSession` owns a private event loop on a daemon thread. The backend
(and with it fal-client's and our HTTP connection pools) is created on that loop
once and reused by every call, from sync code (:meth:`run`, which works even inside
a running event loop) and async code alike (:meth:`arun`, awaitable from any loop).
A semaphore on the session loop bounds the requests in flight across all calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .backends.base import Backend
from .journal import RequestJournal, open_journal

__all__ = ["BriaSession"]

T = TypeVar("T")


class BriaSession:
    """A backend on its own event loop thread. Close it with :meth:`close`.

    Args:
        make_backend: builds the backend; called once, on the session loop.
        max_concurrency: requests in flight at once across every call of the session.
    """

    def __init__(self, make_backend: Callable[[], Backend], *, max_concurrency: int) -> None:
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
        """Run ``coroutine`` on the session loop and wait for it (blocking this thread)."""
        if self._closed:
            coroutine.close()
            raise RuntimeError("this BriaSession is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

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
