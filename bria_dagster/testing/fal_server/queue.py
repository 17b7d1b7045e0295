"""fal's queue protocol: submit, status (polled, or streamed as server-sent events),
result and cancel, jobs per API key with an optional cap on how many run at once (the
excess waits ``IN_QUEUE``), and billing.

Cancelling a queued job removes it (never run, never billed); cancelling a running job
answers 202 but the job still finishes and is billed, as a real app may do. A finished
job drops its arguments (inputs can be large).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .faults import drop
from .http import auth_key, json_response
from .schema import ENDPOINT_PRICES, JobFailed, schema_errors, summary
from .state import ServerState

__all__ = ["JobQueue"]


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
    # Set (and replaced by a fresh one) at every change of state: what a stream waits on.
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def set_state(self, state: str) -> None:
        self.state = state
        self.changed.set()
        self.changed = asyncio.Event()

    def fail(self, exc: JobFailed) -> None:
        self.error = exc.message or (exc.detail if isinstance(exc.detail, str) else "failed")
        self.error_type = exc.error_type
        self.error_status = exc.status
        self.error_detail = exc.detail

    @property
    def cost_micro_usd(self) -> int:
        return round(ENDPOINT_PRICES[self.endpoint] * 1e6) * self.units


def _canonical(endpoint: str, arguments: Any) -> str:
    blob = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return endpoint + " " + hashlib.sha256(blob.encode()).hexdigest()[:24]


KEEPALIVE_S = 15.0
"""How often a status stream sends a comment line while nothing changes (as fal does)."""


def _with_logs(request: web.Request) -> bool:
    return request.query.get("logs", "").lower() in ("true", "1")


def _app_prefix(endpoint: str) -> str:
    owner, alias = endpoint.split("/")[:2]
    return f"{owner}/{alias}"


class JobQueue:
    """The jobs, their per-key queues and the routes of the queue protocol.

    ``process(endpoint, arguments)`` makes a job's result (in ``executor``'s threads) or
    raises :class:`JobFailed`.
    """

    def __init__(
        self, state: ServerState, process: Callable[[str, dict[str, Any]], dict[str, Any]]
    ) -> None:
        self._state = state
        self._process = process
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, collections.deque[str]] = {}
        self._running: dict[str, int] = {}
        self._outstanding: dict[str, int] = {}  # accepted, not completed (queued + running)
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ figures

    def running_by_key(self) -> dict[str, int]:
        return dict(self._running)

    def outstanding_by_key(self) -> dict[str, int]:
        return dict(self._outstanding)

    def in_queue(self) -> int:
        return sum(len(q) for q in list(self._queues.values()))

    async def cancel_tasks(self) -> None:
        """Stop every running job (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ routes

    async def submit(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        state = self._state
        key = auth_key(request)
        if key is None:
            return state.unauthorized(f"submit to {endpoint}")
        fault = state.fault(request, "submit")
        if fault is not None:
            return fault
        if endpoint not in ENDPOINT_PRICES:
            return json_response({"detail": f"Application {endpoint!r} not found"}, 404)
        try:
            arguments = await request.json()
        except ValueError:
            detail = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]
            return json_response({"detail": detail}, 422)
        errors = schema_errors(endpoint, arguments)
        with state.lock:
            reject = bool(errors) and state.knobs.validate_at_submit
            if reject:
                state.stats.rejected_submissions += 1
        if reject:
            return json_response({"detail": errors}, 422)
        request_id = str(uuid.uuid4())
        job = _Job(request_id, endpoint, key, arguments)
        if endpoint.endswith("/replace") and not errors:
            job.units = int(arguments.get("num_images") or 1)
        if errors:
            job.state = "COMPLETED"
            job.fail(JobFailed(422, errors, "validation_error", summary(errors)))
        with state.lock:
            state.stats.submissions += 1
            state.stats.per_request[_canonical(endpoint, arguments)] += 1
            if errors:
                state.stats.completed += 1
                state.stats.failed += 1
        self._jobs[request_id] = job
        position = 0
        if not errors:
            queue = self._queues.setdefault(key, collections.deque())
            queue.append(request_id)
            self._count_outstanding(key, +1)
            self._pump(key)
            position = queue.index(request_id) if request_id in queue else 0
        if state.chance("rate_drop_after_submit"):  # the job exists, the client never hears
            state.record_fault("submit", "drop_after_submit")
            drop(request)
        base = f"{state.base_url}/{_app_prefix(endpoint)}/requests/{request_id}"
        return json_response(
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

    def _admit(
        self, request: web.Request, op: str, prefix: list[str], request_id: str
    ) -> _Job | web.StreamResponse:
        """Count a ``status``, ``stream`` or ``result`` call; the job it asks about, or the
        answer that ends it (401, or an injected fault; a 404 is raised)."""
        self._state.count(f"{op}_calls")
        key = auth_key(request)
        if key is None:
            return self._state.unauthorized(op)
        fault = self._state.fault(request, op)
        return self._find(prefix, request_id, key) if fault is None else fault

    def _find(self, prefix: list[str], request_id: str, key: str) -> _Job:
        job = self._jobs.get(request_id)
        app = "/".join(prefix)
        if job is None or job.key != key or not (job.endpoint + "/").startswith(app + "/"):
            raise web.HTTPNotFound(
                text=json.dumps({"detail": f"Request {request_id!r} not found for {app!r}"}),
                content_type="application/json",
            )
        return job

    def _status_body(self, job: _Job, with_logs: bool) -> dict[str, Any]:
        """The status object of fal's status call (and of each status stream event)."""
        rid = job.request_id
        logs: list[dict[str, Any]] | None = [] if with_logs else None
        base = f"{self._state.base_url}/{_app_prefix(job.endpoint)}/requests/{rid}"
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
        return body

    async def status(self, request: web.Request, prefix: list[str], rid: str) -> web.StreamResponse:
        job = self._admit(request, "status", prefix, rid)
        if not isinstance(job, _Job):
            return job
        body = self._status_body(job, _with_logs(request))
        return json_response(body, headers={"x-fal-request-id": rid})

    async def status_stream(
        self, request: web.Request, prefix: list[str], rid: str
    ) -> web.StreamResponse:
        """fal's status stream: server-sent events, one ``data:`` line with the status
        object at the start and at every change of state, a comment line every
        :data:`KEEPALIVE_S` seconds, and the end of the stream after COMPLETED."""
        job = self._admit(request, "stream", prefix, rid)
        if not isinstance(job, _Job):
            return job
        with self._state.lock:
            served = self._state.knobs.status_stream
        if not served:
            return json_response({"detail": f"Not found: GET {request.path}"}, 404)
        with_logs = _with_logs(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "x-fal-request-id": rid,
            }
        )
        await response.prepare(request)
        # A client that went away (killed, or done with the stream) or a stream cut on
        # purpose is no server error: fal carries on with the job, and so do we.
        with contextlib.suppress(ConnectionResetError):
            await self._stream_events(request, response, job, with_logs)
        return response

    async def _stream_events(
        self, request: web.Request, response: web.StreamResponse, job: _Job, with_logs: bool
    ) -> None:
        sent = 0
        while True:
            changed = job.changed  # taken before the state is read: no change is missed
            event = json.dumps(self._status_body(job, with_logs))
            await response.write(f"data: {event}\n\n".encode())
            sent += 1
            if job.state == "COMPLETED":
                break
            if sent == 1 and self._state.chance("rate_stream_cut"):
                self._state.record_fault("stream", "stream_cut")
                drop(request)
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
                    break
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        await response.write_eof()

    async def result(self, request: web.Request, prefix: list[str], rid: str) -> web.StreamResponse:
        job = self._admit(request, "result", prefix, rid)
        if not isinstance(job, _Job):
            return job
        headers = {"x-fal-request-id": rid}
        if job.state != "COMPLETED":
            return json_response({"detail": "Request is still in progress"}, 400, headers=headers)
        if job.error is not None:
            body = {"detail": job.error_detail, "error_type": job.error_type}
            return json_response(body, job.error_status, headers=headers)
        return json_response(job.result, headers=headers)

    async def cancel(self, request: web.Request, prefix: list[str], rid: str) -> web.StreamResponse:
        self._state.count("cancel_calls")
        key = auth_key(request)
        if key is None:
            return self._state.unauthorized("cancel")
        job = self._find(prefix, rid, key)
        headers = {"x-fal-request-id": rid}
        if job.state == "COMPLETED":
            return json_response({"status": "ALREADY_COMPLETED"}, 400, headers=headers)
        if job.state == "IN_QUEUE":
            queue = self._queues.get(job.key)
            if queue is not None and rid in queue:
                queue.remove(rid)
                self._count_outstanding(job.key, -1)
            job.cancelled = True
            job.fail(JobFailed(400, "Request was cancelled", "request_cancelled", ""))
            job.set_state("COMPLETED")
            self._state.count("cancelled")
        # IN_PROGRESS: the cancellation is requested but the app finishes the job (and it
        # is billed): the worst case a client must handle.
        return json_response({"status": "CANCELLATION_REQUESTED"}, 202, headers=headers)

    # ------------------------------------------------------------------ scheduling

    def _count_outstanding(self, key: str, delta: int) -> None:
        with self._state.lock:
            now = self._outstanding[key] = self._outstanding.get(key, 0) + delta
            seen = self._state.stats.max_outstanding_by_key
            seen[key] = max(seen.get(key, 0), now)

    def pump_all(self) -> None:
        """Start what the (possibly raised) ``max_in_progress`` now allows, for every key."""
        for key in list(self._queues):
            self._pump(key)

    def _pump(self, key: str) -> None:
        state = self._state
        if state.closing:
            return
        queue = self._queues.get(key)
        with state.lock:
            limit = state.knobs.max_in_progress
        while queue and (limit <= 0 or self._running.get(key, 0) < limit):
            job = self._jobs[queue.popleft()]
            job.set_state("IN_PROGRESS")
            job.started = time.monotonic()
            with state.lock:
                running = self._running[key] = self._running.get(key, 0) + 1
                seen = state.stats.max_in_progress_by_key
                seen[key] = max(seen.get(key, 0), running)
            task = asyncio.get_running_loop().create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job) -> None:
        state = self._state
        try:
            with state.lock:
                latency = state.knobs.latency
            if latency:
                await asyncio.sleep(latency)
            loop = asyncio.get_running_loop()
            try:
                job.result = await loop.run_in_executor(
                    self.executor, self._process, job.endpoint, job.arguments
                )
            except JobFailed as exc:
                job.fail(exc)
            except Exception as exc:  # an app crash: 500 with the request id
                job.fail(JobFailed(500, f"Internal error: {exc}", "internal_error", ""))
            job.inference_time = round(time.monotonic() - job.started, 4)
            job.arguments = {}
            job.set_state("COMPLETED")
            with state.lock:
                state.stats.completed += 1
                if job.error is None:
                    state.stats.billed_jobs += 1
                    state.stats.billed_micro_usd += job.cost_micro_usd
                else:
                    state.stats.failed += 1
        finally:
            with state.lock:
                self._running[job.key] -= 1
            self._count_outstanding(job.key, -1)
            self._pump(job.key)
