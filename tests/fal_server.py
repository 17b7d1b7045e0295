"""A fal.ai queue-protocol server on 127.0.0.1 for driving the real ``fal_client``.

It speaks HTTPS with a throwaway CA (``trustme``) and implements what fal-client
1.0.x sends and parses: queue submit, status, result and cancel, the CDN upload
(``/storage/auth/token`` + ``/files/upload``) and the older storage upload
(``/storage/upload/initiate`` + PUT). Three Bria endpoints produce real images:

- ``fal-ai/bria/background/remove``  -> RGBA PNG of the input size (border-colour matte)
- ``fal-ai/bria/background/replace`` -> 1..4 composites on a prompt- or reference-made backdrop
- ``fal-ai/bria/expand``             -> the input padded onto the requested canvas

Knobs (constructor, :meth:`FalTestServer.configure`, ``POST /_test/configure``, or the
command line) add latency, a per-key concurrency limit (excess waits ``IN_QUEUE``) and
faults: 429 with ``Retry-After``, 5xx (half carry ``x-fal-request-id`` so fal-client
does not retry them, half look like nginx ingress errors so it does), dropped
connections, and result files that 404 once. ``fault_ops`` names the operations the
rates apply to (submit, status, result and file by default; also upload). Faults are
decided before any state changes, so a faulted submit never creates a job: a correct
client can reach zero duplicate submissions, which :meth:`FalTestServer.stats` counts.
The one exception is opt-in: ``rate_drop_after_submit`` creates the job and then drops
the reply (the lost response that makes a blind re-submit a duplicate, paid job).

Cancelling a queued job removes it (never run, never billed); cancelling a running job
answers 202 but the job still finishes and is billed, as a real app may do. Only the
newest ``max_files`` result files are kept (``files_evicted`` counts the rest); a finished
job drops its arguments, so long soak runs stay small.

Pointing fal-client at it
-------------------------
fal-client reads ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` when it is imported, and
hard-codes its upload hosts (``REST_URL``, ``CDN_URL``). Either

- set :meth:`FalTestServer.env` in the environment before ``import fal_client``
  (a subprocess, or the standalone mode below), or
- call :func:`point_fal_client_at` on an already imported fal-client. It assigns the
  module's URL settings (``QUEUE_URL_FORMAT``, ``RUN_URL_FORMAT``, ``REST_URL``,
  ``CDN_URL``) and ``SSL_CERT_FILE``: configuration, the same values the env vars
  produce, not a change to fal-client's code. Upload tests need it because no env
  var moves the upload hosts.

httpx (0.28) builds its SSL context from ``SSL_CERT_FILE`` when a client is created
(``trust_env`` is on by default), so the CA file must be in the environment before
fal-client makes its first request.

Standalone::

    python tests/fal_server.py --port 8443 --latency 0.5 --max-in-progress 32 \\
        --rate-429 0.1 --rate-5xx 0.05 --rate-drop 0.02 --rate-missing-once 0.01 --ca-out ca.pem

prints one JSON line (the env dict) when ready and serves until killed. Admin:
``GET /_test/stats``, ``POST /_test/reset``, ``POST /_test/configure`` (JSON knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import trustme
from aiohttp import web
from PIL import Image

__all__ = [
    "ENDPOINT_PRICES",
    "FalTestServer",
    "Knobs",
    "point_fal_client_at",
    "reserve_port",
]

ENDPOINT_PRICES: dict[str, float] = {
    "fal-ai/bria/background/remove": 0.018,  # per call
    "fal-ai/bria/background/replace": 0.023,  # per image
    "fal-ai/bria/expand": 0.04,  # per call
}
MAX_SEED = 2_147_483_647
MAX_CANVAS_AREA = 5000 * 5000
MAX_INPUT_PIXELS = 5000 * 5000
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9")
FAULT_KINDS = ("429", "5xx", "drop", "missing_once", "drop_after_submit")
FAULT_OPS = ("submit", "status", "result", "file", "upload")


def reserve_port() -> int:
    """A free TCP port on 127.0.0.1 (for env vars that must be set before the server starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Knobs:
    """Runtime behaviour. Rates are probabilities per request (0..1)."""

    latency: float = 0.0  # processing seconds per job
    max_in_progress: int = 0  # per API key; 0 = unlimited
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_drop: float = 0.0
    rate_missing_once: float = 0.0  # per result file: first GET is a 404
    rate_drop_after_submit: float = 0.0  # job created, then the connection drops (lost reply)
    retry_after: float = 0.2  # Retry-After seconds on 429
    seed: int | None = None  # for the fault dice and default seeds
    validate_at_submit: bool = True  # schema errors: 422 at submit, else a failed job
    max_files: int = 20_000  # files kept (oldest evicted first); 0 = unlimited
    fault_ops: str = "submit,status,result,file"  # where the rates apply (FAULT_OPS, comma-sep)

    def update(self, **changes: Any) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in fields:
                raise ValueError(f"unknown knob {name!r}; known: {', '.join(fields)}")
            if name.startswith("rate_") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, got {value!r}")
            if name in ("latency", "retry_after") and float(value) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
            if name in ("max_in_progress", "max_files") and int(value) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited), got {value!r}")
            if name == "fault_ops":
                unknown = {op for op in str(value).split(",") if op} - set(FAULT_OPS)
                if unknown:
                    raise ValueError(f"unknown fault_ops {sorted(unknown)}; known: {FAULT_OPS}")
        rates = {n: float(changes.get(n, getattr(self, n))) for n in ("rate_429", "rate_5xx")}
        rates["rate_drop"] = float(changes.get("rate_drop", self.rate_drop))
        if sum(rates.values()) > 1.0:
            raise ValueError(f"rate_429 + rate_5xx + rate_drop must be <= 1, got {rates}")
        for name, value in changes.items():
            current = getattr(self, name)
            if name == "seed":
                setattr(self, name, None if value is None else int(value))
            elif name == "fault_ops":
                setattr(self, name, str(value))
            elif isinstance(current, bool):
                setattr(self, name, bool(value))
            elif name in ("max_in_progress", "max_files"):
                setattr(self, name, int(value))
            else:
                setattr(self, name, float(value))


class _Stats:
    def __init__(self) -> None:
        self.submissions = 0
        self.per_request: collections.Counter[str] = collections.Counter()
        self.rejected_submissions = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.billed_micro_usd = 0
        self.billed_jobs = 0
        self.max_in_progress_by_key: dict[str, int] = {}
        self.max_outstanding_by_key: dict[str, int] = {}
        self.status_calls = 0
        self.result_calls = 0
        self.cancel_calls = 0
        self.file_gets = 0
        self.uploads = 0
        self.files_evicted = 0
        self.unauthorized = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.faults_by_op: collections.Counter[str] = collections.Counter()
        # Every HTTP attempt that reached an operation (faulted ones included), by op.
        self.requests_by_op: collections.Counter[str] = collections.Counter()
        self.requests_in_flight = 0
        self.max_requests_in_flight = 0
        self.connections: set[asyncio.BaseTransport] = set()  # client TCP connections seen
        self.max_open_connections = 0


@dataclasses.dataclass
class _File:
    data: bytes
    content_type: str
    missing_once: bool = False


@dataclasses.dataclass
class _Job:
    request_id: str
    endpoint: str
    key: str
    arguments: dict[str, Any]  # dropped once the job is done (inputs can be large)
    units: int = 1  # billed units: num_images for replace, else 1
    state: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    error_status: int = 0
    error_detail: Any = None
    cancelled: bool = False
    started: float = 0.0
    inference_time: float = 0.0


class _JobFailed(Exception):
    def __init__(self, status: int, detail: Any, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.message = message


def _loc_error(field: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": kind}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _canonical(endpoint: str, arguments: Any) -> str:
    blob = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return endpoint + " " + hashlib.sha256(blob.encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- validation


def _check_int(args: dict[str, Any], name: str, low: int, high: int, errors: list) -> None:
    value = args.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        errors.append(_loc_error(name, "Input should be a valid integer", "int_type"))
    elif value < low:
        errors.append(
            _loc_error(
                name, f"Input should be greater than or equal to {low}", "greater_than_equal"
            )
        )
    elif value > high:
        errors.append(
            _loc_error(name, f"Input should be less than or equal to {high}", "less_than_equal")
        )


def _check_type(args: dict[str, Any], name: str, kind: type, errors: list) -> None:
    value = args.get(name)
    if value is None:
        return
    if kind is bool and not isinstance(value, bool):
        errors.append(_loc_error(name, "Input should be a valid boolean", "bool_type"))
    elif kind is str and not isinstance(value, str):
        errors.append(_loc_error(name, "Input should be a valid string", "string_type"))


def _check_pair(args: dict[str, Any], name: str, errors: list, *, required: bool = False) -> None:
    value = args.get(name)
    if value is None:
        if required:
            errors.append(_loc_error(name, "Field required", "missing"))
        return
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        errors.append(_loc_error(name, "Input should be a list of 2 integers", "list_type"))


def schema_errors(endpoint: str, args: Any) -> list[dict[str, Any]]:
    """Type, range and required-field errors, pydantic-style (what fal's 422 lists)."""
    if not isinstance(args, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors: list[dict[str, Any]] = []
    if "image_url" not in args or args["image_url"] is None:
        errors.append(_loc_error("image_url", "Field required", "missing"))
    _check_type(args, "image_url", str, errors)
    _check_type(args, "sync_mode", bool, errors)
    if endpoint.endswith("/replace"):
        for name in ("ref_image_url", "prompt", "negative_prompt"):
            _check_type(args, name, str, errors)
        for name in ("refine_prompt", "fast"):
            _check_type(args, name, bool, errors)
        _check_int(args, "num_images", 1, 4, errors)
        _check_int(args, "seed", 0, MAX_SEED, errors)
    elif endpoint.endswith("/expand"):
        _check_pair(args, "canvas_size", errors, required=True)
        _check_pair(args, "original_image_size", errors)
        _check_pair(args, "original_image_location", errors)
        ratio = args.get("aspect_ratio")
        if ratio is not None and ratio not in ASPECT_RATIOS:
            errors.append(
                _loc_error(
                    "aspect_ratio",
                    f"Input should be {', '.join(repr(r) for r in ASPECT_RATIOS)}",
                    "enum",
                )
            )
        for name in ("prompt", "negative_prompt"):
            _check_type(args, name, str, errors)
        _check_int(args, "seed", 0, MAX_SEED, errors)
    return errors


# ----------------------------------------------------------------------------- images


def _border_alpha(rgb: np.ndarray) -> np.ndarray:
    """A cheap real matte: distance from the median border colour, soft-thresholded."""
    h, w = rgb.shape[:2]
    band = max(1, round(min(h, w) * 0.03))
    border = np.concatenate(
        [
            rgb[:band].reshape(-1, 3),
            rgb[-band:].reshape(-1, 3),
            rgb[:, :band].reshape(-1, 3),
            rgb[:, -band:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0).astype(np.float32)
    dist = np.sqrt(((rgb.astype(np.float32) - bg) ** 2).sum(axis=2))
    return np.clip((dist - 20.0) / 30.0, 0.0, 1.0)


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _backdrop(size: tuple[int, int], prompt: str, seed: int) -> np.ndarray:
    """A deterministic vertical gradient whose colours come from the prompt and seed."""
    w, h = size
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    top = np.frombuffer(digest[:3], np.uint8).astype(np.float32)
    bottom = np.frombuffer(digest[3:6], np.uint8).astype(np.float32)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = top * (1 - t) + bottom * t
    return np.broadcast_to(col, (h, w, 3)).copy()


# ----------------------------------------------------------------------------- server


class FalTestServer:
    """The fal queue protocol on https://127.0.0.1:PORT, in a background thread.

    ``with FalTestServer(latency=0.1, max_in_progress=4) as server: ...`` or
    ``start()`` / ``stop()``. ``port=None`` picks a free port; give a fixed one (see
    :func:`reserve_port`) when env vars had to be set before the server started.
    ``ca_path`` is where the CA PEM is written (a temporary file by default).
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
        self._knobs = Knobs()
        self._knobs.update(**knobs)
        self._rng = random.Random(self._knobs.seed)
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, collections.deque[str]] = {}
        self._running: dict[str, int] = {}
        self._outstanding: dict[str, int] = {}  # accepted, not completed (queued + running)
        self._tasks: set[asyncio.Task[None]] = set()
        self._files: collections.OrderedDict[str, _File] = collections.OrderedDict()
        self._cdn_tokens: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tmpdir: str | None = None
        self._closing = False
        self.port: int = 0
        self.ca_path: str = ""

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FalTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FalTestServer:
        if self._thread is not None:
            raise RuntimeError("FalTestServer is already running; stop() it first")
        self._closing = False
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        if self._requested_ca is None:
            self._tmpdir = tempfile.mkdtemp(prefix="fal-test-ca-")
            ca_file = Path(self._tmpdir) / "ca.pem"
        else:
            ca_file = self._requested_ca
            ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_file))
        self.ca_path = str(ca_file)
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ssl_ctx)

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
        self.port = int(sock.getsockname()[1])
        self._executor = concurrent.futures.ThreadPoolExecutor(
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
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting this server's CA (for plain httpx/aiohttp clients)."""
        return ssl.create_default_context(cafile=self.ca_path)

    def env(self, key: str = "test-key-0") -> dict[str, str]:
        """Environment for a process that imports fal_client after it is set."""
        host = f"127.0.0.1:{self.port}"
        return {
            "FAL_RUN_HOST": host,
            "FAL_QUEUE_RUN_HOST": host,
            "SSL_CERT_FILE": self.ca_path,
            "FAL_KEY": key,
            "NO_PROXY": "127.0.0.1,localhost",
        }

    # ------------------------------------------------------------------ knobs & stats

    @property
    def knobs(self) -> Knobs:
        with self._lock:
            return dataclasses.replace(self._knobs)

    def configure(self, **knobs: Any) -> None:
        """Change knobs at runtime (thread-safe). Unknown names raise ``ValueError``."""
        with self._lock:
            self._knobs.update(**knobs)
            if "seed" in knobs:
                self._rng = random.Random(self._knobs.seed)
        if self._loop is not None and "max_in_progress" in knobs:
            self._loop.call_soon_threadsafe(self._pump_all)

    def reset_stats(self) -> None:
        with self._lock:
            in_flight = self._stats.requests_in_flight  # their ends are counted down later
            self._stats = _Stats()
            self._stats.requests_in_flight = in_flight
            for key, running in list(self._running.items()):
                self._stats.max_in_progress_by_key[key] = running
            for key, outstanding in list(self._outstanding.items()):
                self._stats.max_outstanding_by_key[key] = outstanding

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
        ``result``, ``file`` (GET of a result file) and ``upload`` (CDN upload),
        faulted ones included. ``max_requests_in_flight`` is the peak of HTTP requests
        being served at once and ``max_open_connections`` the peak of client TCP
        connections open at once (admin calls aside).
        """
        with self._lock:
            s = self._stats
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
                "in_progress": sum(list(self._running.values())),
                "in_queue": sum(len(q) for q in list(self._queues.values())),
                "status_calls": s.status_calls,
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

    # ------------------------------------------------------------------ HTTP plumbing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route a request, counting HTTP requests in flight and client connections open
        at once (``max_requests_in_flight``, ``max_open_connections``; admin calls aside).

        A connection counts as open from its first request until its transport closes.
        """
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["_test"]:
            return await self._admin(request, parts[1:])
        with self._lock:
            s = self._stats
            s.requests_in_flight += 1
            s.max_requests_in_flight = max(s.max_requests_in_flight, s.requests_in_flight)
            if request.transport is not None:
                s.connections.add(request.transport)
            s.connections = {t for t in s.connections if not t.is_closing()}
            s.max_open_connections = max(s.max_open_connections, len(s.connections))
        try:
            return await self._route(request, parts)
        finally:
            with self._lock:
                self._stats.requests_in_flight -= 1

    async def _route(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        method = request.method
        if parts[:1] == ["files"] and len(parts) == 2:
            if method in ("GET", "HEAD"):
                return await self._get_file(request, parts[1])
            if method == "POST" and parts[1] == "upload":
                return await self._cdn_upload(request)
        if parts[:1] == ["storage"]:
            return await self._storage(request, parts[1:])
        if parts[:1] == ["_upload"] and len(parts) == 2 and method == "PUT":
            return await self._storage_put(request, parts[1])
        if "requests" in parts:
            i = parts.index("requests")
            rest = parts[i + 1 :]
            if len(rest) == 1 and method == "GET":
                return await self._result(request, parts[:i], rest[0])
            if len(rest) == 2 and rest[1] == "status" and method == "GET":
                return await self._status(request, parts[:i], rest[0])
            if len(rest) == 2 and rest[1] == "cancel" and method == "PUT":
                return await self._cancel(request, parts[:i], rest[0])
        elif method == "POST" and len(parts) >= 2:
            return await self._submit(request, "/".join(parts))
        return _json({"detail": f"Not found: {method} {request.path}"}, 404)

    def _auth_key(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "key" and token.strip():
            return token.strip()
        return None

    def _unauthorized(self, what: str) -> web.Response:
        with self._lock:
            self._stats.unauthorized += 1
        return _json(
            {
                "detail": f"Missing or malformed Authorization header for {what}; "
                "send 'Authorization: Key <FAL_KEY>'"
            },
            401,
        )

    def _fault(self, request: web.Request, op: str) -> web.StreamResponse | None:
        """Count this attempt at ``op``, then roll the dice: a fault response, a drop, or None."""
        with self._lock:
            self._stats.requests_by_op[op] += 1
            k = self._knobs
            if op not in k.fault_ops.split(","):
                return None
            roll = self._rng.random()
            kind = None
            if roll < k.rate_drop:
                kind = "drop"
            elif roll < k.rate_drop + k.rate_429:
                kind = "429"
            elif roll < k.rate_drop + k.rate_429 + k.rate_5xx:
                kind = "5xx"
            if kind is None:
                return None
            ingress = self._rng.random() < 0.5
            self._stats.faults[kind] += 1
            self._stats.faults_by_op[f"{op}:{kind}"] += 1
            retry_after = k.retry_after
        if kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _Dropped
        if kind == "429":
            return _json(
                {"detail": "Too many requests; slow down and retry after the given delay"},
                429,
                headers={"Retry-After": f"{retry_after:g}"},
            )
        if ingress:  # looks like nginx: fal-client retries it on its own
            return web.Response(
                status=502,
                text="<html><head><title>502 Bad Gateway</title></head><body>"
                "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
                "</body></html>",
                content_type="text/html",
            )
        return _json(
            {"detail": "Service temporarily unavailable (injected fault)"},
            503,
            headers={"x-fal-request-id": str(uuid.uuid4())},
        )

    # ------------------------------------------------------------------ admin

    async def _admin(self, request: web.Request, parts: list[str]) -> web.Response:
        name = parts[0] if parts else ""
        if name == "stats" and request.method == "GET":
            return _json(self.stats())
        if name == "reset" and request.method == "POST":
            self.reset_stats()
            return _json({"ok": True})
        if name == "configure" and request.method == "POST":
            try:
                knobs = await request.json()
                if not isinstance(knobs, dict):
                    raise ValueError("body must be a JSON object of knobs")
                self.configure(**knobs)
            except (ValueError, TypeError) as exc:
                return _json({"detail": str(exc)}, 400)
            return _json({"ok": True, "knobs": dataclasses.asdict(self.knobs)})
        if name == "knobs" and request.method == "GET":
            return _json(dataclasses.asdict(self.knobs))
        return _json({"detail": f"unknown admin call {request.method} {request.path}"}, 404)

    # ------------------------------------------------------------------ queue

    async def _submit(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        key = self._auth_key(request)
        if key is None:
            return self._unauthorized(f"submit to {endpoint}")
        fault = self._fault(request, "submit")
        if fault is not None:
            return fault
        if endpoint not in ENDPOINT_PRICES:
            return _json({"detail": f"Application {endpoint!r} not found"}, 404)
        try:
            arguments = await request.json()
        except ValueError:
            return _json(
                {"detail": [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]},
                422,
            )
        errors = schema_errors(endpoint, arguments)
        with self._lock:
            reject = bool(errors) and self._knobs.validate_at_submit
            if reject:
                self._stats.rejected_submissions += 1
        if reject:
            return _json({"detail": errors}, 422)
        request_id = str(uuid.uuid4())
        job = _Job(request_id, endpoint, key, arguments)
        if endpoint.endswith("/replace") and not errors:
            job.units = int(arguments.get("num_images") or 1)
        if errors:
            job.state = "COMPLETED"
            self._fail(job, _JobFailed(422, errors, "validation_error", _summary(errors)))
        with self._lock:
            self._stats.submissions += 1
            self._stats.per_request[_canonical(endpoint, arguments)] += 1
            if errors:
                self._stats.completed += 1
                self._stats.failed += 1
        self._jobs[request_id] = job
        position = 0
        if not errors:
            queue = self._queues.setdefault(key, collections.deque())
            queue.append(request_id)
            self._count_outstanding(key, +1)
            self._pump(key)
            position = queue.index(request_id) if request_id in queue else 0
        with self._lock:
            lose_reply = self._rng.random() < self._knobs.rate_drop_after_submit
            if lose_reply:
                self._stats.faults["drop_after_submit"] += 1
                self._stats.faults_by_op["submit:drop_after_submit"] += 1
        if lose_reply:  # the job exists, the client never hears of it
            if request.transport is not None:
                request.transport.abort()
            raise _Dropped
        base = f"{self.base_url}/{_app_prefix(endpoint)}/requests/{request_id}"
        return _json(
            {
                "status": job.state,
                "request_id": request_id,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "queue_position": position,
            },
            headers={"x-fal-request-id": request_id},
        )

    def _find(self, request: web.Request, prefix: list[str], request_id: str, key: str) -> _Job:
        job = self._jobs.get(request_id)
        app = "/".join(prefix)
        if job is None or job.key != key or not (job.endpoint + "/").startswith(app + "/"):
            raise web.HTTPNotFound(
                text=json.dumps({"detail": f"Request {request_id!r} not found for {app!r}"}),
                content_type="application/json",
            )
        return job

    async def _status(
        self, request: web.Request, prefix: list[str], rid: str
    ) -> web.StreamResponse:
        with self._lock:
            self._stats.status_calls += 1
        key = self._auth_key(request)
        if key is None:
            return self._unauthorized("status")
        fault = self._fault(request, "status")
        if fault is not None:
            return fault
        job = self._find(request, prefix, rid, key)
        with_logs = request.query.get("logs", "").lower() in ("true", "1")
        logs: list[dict[str, Any]] | None = [] if with_logs else None
        base = f"{self.base_url}/{_app_prefix(job.endpoint)}/requests/{rid}"
        body: dict[str, Any] = {"status": job.state, "request_id": rid, "response_url": base}
        if job.state == "IN_QUEUE":
            queue = self._queues.get(job.key) or collections.deque()
            body["queue_position"] = queue.index(rid) if rid in queue else 0
        elif job.state == "IN_PROGRESS":
            body["logs"] = logs
        else:
            body["logs"] = logs
            body["metrics"] = {"inference_time": job.inference_time} if not job.error else {}
            if job.error is not None:
                body["error"] = job.error
                body["error_type"] = job.error_type
        return _json(body, headers={"x-fal-request-id": rid})

    async def _result(
        self, request: web.Request, prefix: list[str], rid: str
    ) -> web.StreamResponse:
        with self._lock:
            self._stats.result_calls += 1
        key = self._auth_key(request)
        if key is None:
            return self._unauthorized("result")
        fault = self._fault(request, "result")
        if fault is not None:
            return fault
        job = self._find(request, prefix, rid, key)
        headers = {"x-fal-request-id": rid}
        if job.state != "COMPLETED":
            return _json({"detail": "Request is still in progress"}, 400, headers=headers)
        if job.error is not None:
            body = {"detail": job.error_detail, "error_type": job.error_type}
            return _json(body, job.error_status, headers=headers)
        return _json(job.result, headers=headers)

    async def _cancel(
        self, request: web.Request, prefix: list[str], rid: str
    ) -> web.StreamResponse:
        with self._lock:
            self._stats.cancel_calls += 1
        key = self._auth_key(request)
        if key is None:
            return self._unauthorized("cancel")
        job = self._find(request, prefix, rid, key)
        headers = {"x-fal-request-id": rid}
        if job.state == "COMPLETED":
            return _json({"status": "ALREADY_COMPLETED"}, 400, headers=headers)
        if job.state == "IN_QUEUE":
            queue = self._queues.get(job.key)
            if queue is not None and rid in queue:
                queue.remove(rid)
                self._count_outstanding(job.key, -1)
            job.cancelled = True
            job.state = "COMPLETED"
            self._fail(job, _JobFailed(400, "Request was cancelled", "request_cancelled", ""))
            with self._lock:
                self._stats.cancelled += 1
        # IN_PROGRESS: the cancellation is requested but the app finishes the job (and it
        # is billed): the worst case a client must handle.
        return _json({"status": "CANCELLATION_REQUESTED"}, 202, headers=headers)

    def _fail(self, job: _Job, exc: _JobFailed) -> None:
        job.error = exc.message or (exc.detail if isinstance(exc.detail, str) else "failed")
        job.error_type = exc.error_type
        job.error_status = exc.status
        job.error_detail = exc.detail

    # ------------------------------------------------------------------ scheduling

    def _count_outstanding(self, key: str, delta: int) -> None:
        with self._lock:
            now = self._outstanding[key] = self._outstanding.get(key, 0) + delta
            seen = self._stats.max_outstanding_by_key
            seen[key] = max(seen.get(key, 0), now)

    def _pump_all(self) -> None:
        for key in list(self._queues):
            self._pump(key)

    def _pump(self, key: str) -> None:
        if self._closing:
            return
        queue = self._queues.get(key)
        with self._lock:
            limit = self._knobs.max_in_progress
        while queue and (limit <= 0 or self._running.get(key, 0) < limit):
            job = self._jobs[queue.popleft()]
            job.state = "IN_PROGRESS"
            job.started = time.monotonic()
            with self._lock:
                running = self._running[key] = self._running.get(key, 0) + 1
                seen = self._stats.max_in_progress_by_key
                seen[key] = max(seen.get(key, 0), running)
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job) -> None:
        try:
            with self._lock:
                latency = self._knobs.latency
            if latency:
                await asyncio.sleep(latency)
            loop = asyncio.get_running_loop()
            try:
                job.result = await loop.run_in_executor(self._executor, self._process, job)
            except _JobFailed as exc:
                self._fail(job, exc)
            except Exception as exc:  # an app crash: 500 with the request id
                self._fail(job, _JobFailed(500, f"Internal error: {exc}", "internal_error", ""))
            job.inference_time = round(time.monotonic() - job.started, 4)
            job.arguments = {}
            job.state = "COMPLETED"
            with self._lock:
                self._stats.completed += 1
                if job.error is None:
                    self._stats.billed_jobs += 1
                    self._stats.billed_micro_usd += _cost_micro_usd(job)
                else:
                    self._stats.failed += 1
        finally:
            with self._lock:
                self._running[job.key] -= 1
            self._count_outstanding(job.key, -1)
            self._pump(job.key)

    # ------------------------------------------------------------------ files & uploads

    def _store_file(self, data: bytes, content_type: str, suffix: str, *, faulty: bool) -> str:
        name = uuid.uuid4().hex + suffix
        missing = False
        if faulty:
            with self._lock:
                missing = self._rng.random() < self._knobs.rate_missing_once
        self._put_file(name, _File(data, content_type, missing))
        return f"{self.base_url}/files/{name}"

    def _file(self, name: str) -> _File | None:
        with self._lock:
            return self._files.get(name)

    def _put_file(self, name: str, entry: _File) -> None:
        """Keep ``entry`` (from any thread); evict the oldest files beyond ``max_files``."""
        with self._lock:
            self._files[name] = entry
            limit = self._knobs.max_files
            while limit and len(self._files) > limit:
                self._files.popitem(last=False)
                self._stats.files_evicted += 1

    async def _get_file(self, request: web.Request, name: str) -> web.StreamResponse:
        with self._lock:
            self._stats.file_gets += 1
        fault = self._fault(request, "file")
        if fault is not None:
            return fault
        entry = self._file(name)
        if entry is None:
            return _json({"detail": f"File {name!r} not found"}, 404)
        if entry.missing_once:
            entry.missing_once = False
            with self._lock:
                self._stats.faults["missing_once"] += 1
                self._stats.faults_by_op["file:missing_once"] += 1
            return _json({"detail": f"File {name!r} not found (not yet replicated)"}, 404)
        return web.Response(body=entry.data, content_type=entry.content_type)

    async def _storage(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        key = self._auth_key(request)
        if key is None:
            return self._unauthorized("storage")
        if parts == ["auth", "token"] and request.method == "POST":
            token = secrets.token_urlsafe(16)
            self._cdn_tokens.add(token)
            expires = datetime.now(UTC) + timedelta(hours=1)
            return _json(
                {
                    "token": token,
                    "token_type": "Bearer",
                    "base_url": self.base_url,
                    "expires_at": expires.isoformat(),
                }
            )
        if parts == ["upload", "initiate"] and request.method == "POST":
            body = await request.json()
            name = uuid.uuid4().hex + "-" + Path(str(body.get("file_name") or "upload.bin")).name
            self._put_file(name, _File(b"", str(body.get("content_type") or "")))
            return _json(
                {
                    "upload_url": f"{self.base_url}/_upload/{name}",
                    "file_url": f"{self.base_url}/files/{name}",
                }
            )
        return _json({"detail": f"Not found: {request.method} {request.path}"}, 404)

    async def _storage_put(self, request: web.Request, name: str) -> web.StreamResponse:
        initiated = self._file(name)
        if initiated is None:
            return _json({"detail": f"No upload initiated for {name!r}"}, 404)
        data = await request.read()
        content_type = request.headers.get("Content-Type") or initiated.content_type
        self._put_file(name, _File(data, content_type or "application/octet-stream"))
        with self._lock:
            self._stats.uploads += 1
        return web.Response(status=200)

    async def _cdn_upload(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._cdn_tokens:
            with self._lock:
                self._stats.unauthorized += 1
            return _json(
                {"detail": "Invalid or missing CDN token; get one from /storage/auth/token"}, 401
            )
        fault = self._fault(request, "upload")
        if fault is not None:
            return fault
        data = await request.read()
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        file_name = Path(request.headers.get("X-Fal-File-Name") or "upload.bin").name
        url = self._store_file(data, content_type, "-" + file_name, faulty=False)
        with self._lock:
            self._stats.uploads += 1
        return _json({"access_url": url, "content_type": content_type, "file_name": file_name})

    # ------------------------------------------------------------------ processing

    def _load(self, field: str, url: str) -> Image.Image:
        """Fetch an input: a data URI or a file served by this server; else a 422."""
        if url.startswith("data:"):
            header, sep, payload = url[5:].partition(",")
            if not sep:
                raise _invalid(field, f"Malformed data URI in {field}", "image_load_error")
            try:
                if ";base64" in header:
                    data = base64.b64decode(payload, validate=True)
                else:
                    data = payload.encode()
            except (binascii.Error, ValueError):
                raise _invalid(field, f"Invalid base64 in {field}", "image_load_error") from None
        else:
            parsed = urlsplit(url)
            local = parsed.hostname in ("127.0.0.1", "localhost") and parsed.port == self.port
            parts = [p for p in parsed.path.split("/") if p]
            entry = self._file(parts[1]) if local and len(parts) == 2 else None
            if entry is None or parts[0] != "files":
                raise _invalid(
                    field,
                    f"Failed to download the file from {url[:200]!r}: only data URIs and files "
                    "on this server are reachable",
                    "file_download_error",
                )
            data = entry.data
        try:
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_INPUT_PIXELS:
                raise _invalid(
                    field, f"Image is too large ({img.size[0]}x{img.size[1]})", "image_too_large"
                )
            img.load()
        except _JobFailed:
            raise
        except Exception as exc:
            raise _invalid(
                field, f"Unable to load the image from {field}: {exc}", "image_load_error"
            ) from None
        return img.convert("RGBA") if "A" in img.mode else img.convert("RGB")

    def _output(self, img: Image.Image, sync: bool) -> dict[str, Any]:
        data = _encode_png(img)
        name = uuid.uuid4().hex + ".png"
        if sync:
            url = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            url = self._store_file(data, "image/png", ".png", faulty=True)
            name = url.rsplit("/", 1)[1]
        return {
            "url": url,
            "content_type": "image/png",
            "file_name": name,
            "file_size": len(data),
            "width": img.width,
            "height": img.height,
        }

    def _seed(self, args: dict[str, Any]) -> int:
        if args.get("seed") is not None:
            return int(args["seed"])
        with self._lock:
            return self._rng.randrange(MAX_SEED)

    def _process(self, job: _Job) -> dict[str, Any]:
        args = job.arguments
        sync = bool(args.get("sync_mode", False))
        if job.endpoint.endswith("/remove"):
            img = self._load("image_url", args["image_url"])
            rgb = np.asarray(img.convert("RGB"))
            alpha = _border_alpha(rgb)
            if img.mode == "RGBA":
                alpha = np.minimum(alpha, np.asarray(img.getchannel("A"), np.float32) / 255)
            rgba = np.dstack([rgb, np.round(alpha * 255).astype(np.uint8)])
            return {"image": self._output(Image.fromarray(rgba, "RGBA"), sync)}
        if job.endpoint.endswith("/replace"):
            return self._replace(args, sync)
        return self._expand(args, sync)

    def _replace(self, args: dict[str, Any], sync: bool) -> dict[str, Any]:
        ref = args.get("ref_image_url") or None
        prompt = (args.get("prompt") or "").strip() or None
        if (ref is None) == (prompt is None):
            raise _invalid(
                "ref_image_url",
                "Either ref_image_url or prompt has to be provided but not both",
                "value_error",
            )
        img = self._load("image_url", args["image_url"])
        rgb = np.asarray(img.convert("RGB")).astype(np.float32)
        if img.mode == "RGBA":
            alpha = np.asarray(img.getchannel("A"), np.float32) / 255
        else:
            alpha = _border_alpha(rgb.astype(np.uint8))
        seed = self._seed(args)
        ref_rgb = None
        if ref is not None:
            ref_img = self._load("ref_image_url", ref).convert("RGB").resize(img.size)
            ref_rgb = np.asarray(ref_img).astype(np.float32)
        images = []
        for i in range(int(args.get("num_images") or 1)):
            if ref_rgb is not None:
                tint = _backdrop((1, 1), "ref", seed + i)[0, 0]
                bg = ref_rgb * 0.85 + tint * 0.15
            else:
                bg = _backdrop(img.size, prompt or "", seed + i)
            out = rgb * alpha[..., None] + bg * (1 - alpha[..., None])
            pil = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB")
            images.append(self._output(pil, sync))
        return {"images": images, "seed": seed}

    def _expand(self, args: dict[str, Any], sync: bool) -> dict[str, Any]:
        img = self._load("image_url", args["image_url"]).convert("RGB")
        cw, ch = args["canvas_size"]
        ratio = args.get("aspect_ratio")
        size = args.get("original_image_size")
        location = args.get("original_image_location")
        if (size is None) != (location is None):
            raise _invalid(
                "original_image_location",
                "original_image_size and original_image_location must be given together",
                "value_error",
            )
        if ratio is not None:
            rw, rh = (int(v) for v in ratio.split(":"))
            w, h = img.size
            if w * rh < h * rw:
                cw, ch = math.ceil(h * rw / rh), h
            else:
                cw, ch = w, math.ceil(w * rh / rw)
            size = location = None
        if cw <= 0 or ch <= 0 or cw * ch >= MAX_CANVAS_AREA:
            raise _invalid(
                "canvas_size",
                f"canvas_size {cw}x{ch} must be positive with an area under 5000x5000",
                "value_error",
            )
        if size is not None:
            if size[0] <= 0 or size[1] <= 0:
                raise _invalid("original_image_size", "sizes must be positive", "value_error")
            placed = img.resize((size[0], size[1]))
            x, y = location
        else:
            scale = min(1.0, cw / img.width, ch / img.height)
            placed = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            )
            x, y = (cw - placed.width) // 2, (ch - placed.height) // 2
        arr = np.asarray(placed)
        edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).mean(axis=0)
        canvas = Image.new("RGB", (cw, ch), tuple(int(v) for v in edge.round()))
        canvas.paste(placed, (int(x), int(y)))
        return {"image": self._output(canvas, sync), "seed": self._seed(args)}


class _Dropped(web.HTTPException):
    """Raised after aborting the transport: no response goes out."""

    status_code = 499


def _app_prefix(endpoint: str) -> str:
    owner, alias = endpoint.split("/")[:2]
    return f"{owner}/{alias}"


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors)


def _invalid(field: str, msg: str, kind: str) -> _JobFailed:
    detail = [_loc_error(field, msg, kind)]
    return _JobFailed(422, detail, kind, f"{field}: {msg}")


def _cost_micro_usd(job: _Job) -> int:
    return round(ENDPOINT_PRICES[job.endpoint] * 1e6) * job.units


def point_fal_client_at(server: FalTestServer) -> Callable[[], None]:
    """Aim an already imported ``fal_client`` at ``server``; returns an undo function.

    Sets the module's URL settings (``QUEUE_URL_FORMAT``, ``RUN_URL_FORMAT``,
    ``REST_URL``, ``CDN_URL``) and ``SSL_CERT_FILE`` / ``NO_PROXY`` in ``os.environ``:
    the values fal-client would compute from ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST``
    at import, plus the upload hosts no env var reaches. This is configuration of
    fal-client, not a change to its code. Clients created before the call keep
    their old SSL context; create the ``AsyncClient`` afterwards.
    """
    import fal_client.client as fal_module

    base = server.base_url
    values = {
        "QUEUE_URL_FORMAT": base + "/",
        "RUN_URL_FORMAT": base + "/",
        "REST_URL": base,
        "CDN_URL": base,
    }
    saved_attrs = {name: getattr(fal_module, name) for name in values}
    env = {"SSL_CERT_FILE": server.ca_path, "NO_PROXY": "127.0.0.1,localhost"}
    saved_env = {name: os.environ.get(name) for name in env}
    for name, value in values.items():
        setattr(fal_module, name, value)
    os.environ.update(env)

    def undo() -> None:
        for name, value in saved_attrs.items():
            setattr(fal_module, name, value)
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    return undo


class FalServerProcess:
    """This server in standalone mode, in its own process (its CPU is not the client's).

    ``knobs`` are the command-line options (``latency=0.5`` -> ``--latency 0.5``).
    ``env`` is what a client process needs before it imports fal_client; the admin
    calls (``stats``, ``reset``, ``configure``) go over TLS with the server's CA.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, key: str = "test-key-0", **knobs: Any):
        self.ca = Path(workdir) / "fal-ca.pem"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--key", key]
        for name, value in knobs.items():
            if value is not None:
                cmd += ["--" + name.replace("_", "-"), str(value)]
        cmd += ["--ca-out", str(self.ca)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.kill()
            raise RuntimeError("the fal test server did not start; run it by hand to see why")
        self.env: dict[str, str] = json.loads(line)
        self.key = self.env["FAL_KEY"]
        self.base = "https://" + self.env["FAL_RUN_HOST"]
        self._ssl = ssl.create_default_context(cafile=str(self.ca))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self._ssl, timeout=30) as reply:
            return json.loads(reply.read())

    def configure(self, **knobs: Any) -> None:
        self._call("POST", "/_test/configure", knobs)

    def run_client(
        self, script: str, key: str, args: list[str], *, timeout: float = 3600
    ) -> dict[str, Any]:
        """``script --client <args>`` in a fresh process pointed at this server (its env set
        before fal_client is imported) with ``FAL_KEY=key``; its last stdout line, as JSON."""
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, **self.env, "FAL_KEY": key, "PYTHONPATH": root}
        proc = subprocess.run(
            [sys.executable, script, "--client", *args],
            env=env,
            capture_output=True,
            text=True,
            cwd=root,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"client {args} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def reset(self) -> None:
        self._call("POST", "/_test/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_test/stats")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fal.ai queue protocol test server")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--max-in-progress", type=int, default=0, help="per key; 0 = unlimited")
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-5xx", type=float, default=0.0)
    parser.add_argument("--rate-drop", type=float, default=0.0)
    parser.add_argument("--rate-missing-once", type=float, default=0.0)
    parser.add_argument("--rate-drop-after-submit", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.2)
    parser.add_argument("--max-files", type=int, default=20_000, help="0 = keep every file")
    parser.add_argument("--fault-ops", default=Knobs.fault_ops, help="ops the rates apply to")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--key", default="test-key-0", help="FAL_KEY printed in the env")
    parser.add_argument("--ca-out", default=None, help="where to write the CA PEM")
    args = parser.parse_args(argv)
    server = FalTestServer(
        args.port or None,
        ca_path=args.ca_out,
        latency=args.latency,
        max_in_progress=args.max_in_progress,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_drop=args.rate_drop,
        rate_missing_once=args.rate_missing_once,
        rate_drop_after_submit=args.rate_drop_after_submit,
        retry_after=args.retry_after,
        max_files=args.max_files,
        fault_ops=args.fault_ops,
        seed=args.seed,
    )
    server.start()
    print(json.dumps(server.env(args.key)), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
