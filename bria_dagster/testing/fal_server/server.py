"""The server: its lifecycle in a background thread, the routes, the knobs and counters."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .apps import BriaApps
from .faults import FAULT_KINDS, Knobs
from .files import FileStore
from .http import json_response
from .queue import JobQueue
from .state import ServerState, Stats
from .tls import ServerCertificate, client_env

__all__ = ["FalTestServer"]


def _spend_cpu(seconds: float) -> None:
    """Busy-loop until this thread has used ``seconds`` of CPU time (not wall time: on a
    loaded machine it takes longer, as real work would)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class FalTestServer:
    """The fal queue protocol on https://127.0.0.1:PORT, in a background thread.

    ``with FalTestServer(latency=0.1, max_in_progress=4) as server: ...`` or
    ``start()`` / ``stop()``. ``port=None`` picks a free port; give a fixed one (see
    :func:`reserve_port`) when env vars had to be set before the server started.
    ``ca_path`` is where the CA PEM is written (a temporary file by default).
    ``knobs`` are :class:`Knobs` fields (latency, faults, a per-key concurrency cap).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        ca_path: str | os.PathLike[str] | None = None,
        workers: int = 4,
        **knobs: Any,
    ) -> None:
        self._requested_port = port
        self._requested_ca = Path(ca_path) if ca_path is not None else None
        self._workers = workers
        initial = Knobs()
        initial.update(**knobs)
        self._state = ServerState(initial)
        self._files = FileStore(self._state)
        self._queue = JobQueue(self._state, BriaApps(self._state, self._files).process)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._certificate: ServerCertificate | None = None
        self.ca_path: str = ""

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._state.port

    @property
    def base_url(self) -> str:
        return self._state.base_url

    def __enter__(self) -> FalTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FalTestServer:
        if self._thread is not None:
            raise RuntimeError("FalTestServer is already running; stop() it first")
        self._state.closing = False
        self._certificate = ServerCertificate(self._requested_ca)
        self.ca_path = self._certificate.ca_path
        ssl_ctx = self._certificate.server_context()

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._requested_port or 0))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on 127.0.0.1:{self._requested_port}: {exc}; "
                "pick another port (reserve_port()) or pass port=None"
            ) from exc
        self._state.port = int(sock.getsockname()[1])
        self._queue.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="fal-test-server"
        )
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock, ssl_ctx))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fal-test-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise RuntimeError(f"fal test server failed to start: {failure[0]!r}")
        return self

    async def _serve(self, sock: socket.socket, ssl_ctx: ssl.SSLContext) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, ssl_context=ssl_ctx)
        await site.start()

    async def _shutdown(self) -> None:
        self._state.closing = True
        await self._queue.cancel_tasks()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None
        if self._queue.executor is not None:
            self._queue.executor.shutdown(wait=False, cancel_futures=True)
        if self._certificate is not None:
            self._certificate.cleanup()

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting this server's CA (for plain httpx/aiohttp clients)."""
        return ssl.create_default_context(cafile=self.ca_path)

    def env(self, key: str = "test-key-0") -> dict[str, str]:
        """Environment for a process that imports fal_client after it is set."""
        return client_env(self.port, self.ca_path, key)

    # ------------------------------------------------------------------ knobs & stats

    @property
    def knobs(self) -> Knobs:
        with self._state.lock:
            return dataclasses.replace(self._state.knobs)

    def configure(self, **knobs: Any) -> None:
        """Change knobs at runtime (thread-safe). Unknown names raise ``ValueError``."""
        state = self._state
        with state.lock:
            state.knobs.update(**knobs)
            if "seed" in knobs:
                state.rng.seed(state.knobs.seed)
        if self._loop is not None and "max_in_progress" in knobs:
            self._loop.call_soon_threadsafe(self._queue.pump_all)

    def reset_stats(self) -> None:
        state = self._state
        with state.lock:
            in_flight = state.stats.requests_in_flight  # their ends are counted down later
            state.stats = Stats()
            state.stats.requests_in_flight = in_flight
            state.stats.max_in_progress_by_key.update(self._queue.running_by_key())
            state.stats.max_outstanding_by_key.update(self._queue.outstanding_by_key())

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters.

        ``submissions`` counts accepted jobs; ``submissions_per_request`` keys are the
        endpoint plus a sha256 prefix of the canonical JSON arguments, and
        ``duplicate_submissions`` is the sum of (count - 1) over them. ``billed_cost_usd``
        adds list prices of successfully completed jobs (remove 0.018, replace 0.023 per
        image, expand 0.04). ``max_in_progress_by_key`` is the peak of concurrently
        running jobs per API key, ``max_in_progress_seen`` the largest of those;
        ``max_outstanding_by_key`` the peak of accepted jobs not yet completed (IN_QUEUE
        plus IN_PROGRESS) per key: what a client had in flight at the service, also when
        ``max_in_progress`` makes the excess wait in the queue.
        ``faults`` counts injected faults by kind (``faults_by_op`` by ``op:kind``).
        ``requests_by_op`` counts every HTTP attempt at ``submit``, ``status``,
        ``stream`` (a status stream), ``result``, ``file`` (GET of a result file) and
        ``upload`` (CDN upload),
        faulted ones included. ``max_requests_in_flight`` is the peak of HTTP requests
        being served at once and ``max_open_connections`` the peak of client TCP
        connections open at once (admin calls aside).
        """
        with self._state.lock:
            s = self._state.stats
            per_key = dict(s.max_in_progress_by_key)
            return {
                "submissions": s.submissions,
                "distinct_requests": len(s.per_request),
                "duplicate_submissions": sum(n - 1 for n in s.per_request.values()),
                "submissions_per_request": dict(s.per_request),
                "rejected_submissions": s.rejected_submissions,
                "completed": s.completed,
                "failed": s.failed,
                "cancelled": s.cancelled,
                "billed_jobs": s.billed_jobs,
                "billed_cost_usd": round(s.billed_micro_usd / 1e6, 6),
                "max_in_progress_seen": max(per_key.values(), default=0),
                "max_in_progress_by_key": per_key,
                "max_outstanding_by_key": dict(s.max_outstanding_by_key),
                "in_progress": sum(self._queue.running_by_key().values()),
                "in_queue": self._queue.in_queue(),
                "status_calls": s.status_calls,
                "stream_calls": s.stream_calls,
                "result_calls": s.result_calls,
                "cancel_calls": s.cancel_calls,
                "file_gets": s.file_gets,
                "uploads": s.uploads,
                "files_evicted": s.files_evicted,
                "unauthorized": s.unauthorized,
                "faults": {kind: s.faults.get(kind, 0) for kind in FAULT_KINDS},
                "faults_by_op": dict(s.faults_by_op),
                "requests_by_op": dict(s.requests_by_op),
                "max_requests_in_flight": s.max_requests_in_flight,
                "max_open_connections": s.max_open_connections,
            }

    # ------------------------------------------------------------------ routes

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route a request, counting HTTP requests in flight and client connections open
        at once (``max_requests_in_flight``, ``max_open_connections``; admin calls aside).

        A connection counts as open from its first request until its transport closes.
        Each request first spends ``cpu_per_request_ms`` of CPU time in the server's
        event loop, as TLS and JSON handling do on a real server.
        """
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["_test"]:
            return await self._admin(request, parts[1:])
        state = self._state
        with state.lock:
            cpu_s = state.knobs.cpu_per_request_ms / 1000
        if cpu_s:
            _spend_cpu(cpu_s)
        with state.lock:
            s = state.stats
            s.requests_in_flight += 1
            s.max_requests_in_flight = max(s.max_requests_in_flight, s.requests_in_flight)
            if request.transport is not None:
                s.connections.add(request.transport)
            s.connections = {t for t in s.connections if not t.is_closing()}
            s.max_open_connections = max(s.max_open_connections, len(s.connections))
        try:
            return await self._route(request, parts)
        finally:
            with state.lock:
                state.stats.requests_in_flight -= 1

    async def _route(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        method = request.method
        if parts[:1] == ["files"] and len(parts) == 2:
            if method in ("GET", "HEAD"):
                return await self._files.get_file(request, parts[1])
            if method == "POST" and parts[1] == "upload":
                return await self._files.cdn_upload(request)
        if parts[:1] == ["storage"]:
            return await self._files.storage(request, parts[1:])
        if parts[:1] == ["_upload"] and len(parts) == 2 and method == "PUT":
            return await self._files.storage_put(request, parts[1])
        if "requests" in parts:
            i = parts.index("requests")
            rest = parts[i + 1 :]
            if len(rest) == 1 and method == "GET":
                return await self._queue.result(request, parts[:i], rest[0])
            if len(rest) == 2 and rest[1] == "status" and method == "GET":
                return await self._queue.status(request, parts[:i], rest[0])
            if rest[1:] == ["status", "stream"] and method == "GET":
                return await self._queue.status_stream(request, parts[:i], rest[0])
            if len(rest) == 2 and rest[1] == "cancel" and method == "PUT":
                return await self._queue.cancel(request, parts[:i], rest[0])
        elif method == "POST" and len(parts) >= 2:
            return await self._queue.submit(request, "/".join(parts))
        return json_response({"detail": f"Not found: {method} {request.path}"}, 404)

    async def _admin(self, request: web.Request, parts: list[str]) -> web.Response:
        """``GET /_test/stats``, ``POST /_test/reset``, ``POST /_test/configure`` (JSON
        knobs), ``GET /_test/knobs``: the standalone server's controls."""
        name = parts[0] if parts else ""
        if name == "stats" and request.method == "GET":
            return json_response(self.stats())
        if name == "reset" and request.method == "POST":
            self.reset_stats()
            return json_response({"ok": True})
        if name == "configure" and request.method == "POST":
            try:
                knobs = await request.json()
                if not isinstance(knobs, dict):
                    raise ValueError("body must be a JSON object of knobs")
                self.configure(**knobs)
            except (ValueError, TypeError) as exc:
                return json_response({"detail": str(exc)}, 400)
            return json_response({"ok": True, "knobs": dataclasses.asdict(self.knobs)})
        if name == "knobs" and request.method == "GET":
            return json_response(dataclasses.asdict(self.knobs))
        return json_response({"detail": f"unknown admin call {request.method} {request.path}"}, 404)
