"""What every part of the server shares: the knobs, the dice, the counters and one lock."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from .faults import Knobs, fault_response, roll
from .http import json_response

__all__ = ["ServerState", "Stats"]


@dataclass
class Stats:
    """The counters behind :meth:`FalTestServer.stats` (replaced whole on reset)."""

    submissions: int = 0
    per_request: Counter[str] = field(default_factory=Counter)
    rejected_submissions: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    billed_micro_usd: int = 0
    billed_jobs: int = 0
    max_in_progress_by_key: dict[str, int] = field(default_factory=dict)
    max_outstanding_by_key: dict[str, int] = field(default_factory=dict)
    status_calls: int = 0
    stream_calls: int = 0  # status streams opened
    result_calls: int = 0
    cancel_calls: int = 0
    file_gets: int = 0
    uploads: int = 0
    files_evicted: int = 0
    unauthorized: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    faults_by_op: Counter[str] = field(default_factory=Counter)
    # Every HTTP attempt that reached an operation (faulted ones included), by op.
    requests_by_op: Counter[str] = field(default_factory=Counter)
    requests_in_flight: int = 0
    max_requests_in_flight: int = 0
    # Client TCP connections seen.
    connections: set[asyncio.BaseTransport] = field(default_factory=set)
    max_open_connections: int = 0


class ServerState:
    """Shared by the queue, the file store and the apps; ``lock`` guards knobs, dice and
    counters (the admin calls and :meth:`FalTestServer.configure` come from other threads)."""

    def __init__(self, knobs: Knobs) -> None:
        self.lock = threading.Lock()
        self.knobs = knobs
        self.rng = random.Random(knobs.seed)
        self.stats = Stats()
        self.port = 0  # known once the server listens
        self.closing = False

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def count(self, name: str) -> None:
        """Add one to the counter ``name``."""
        with self.lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def chance(self, knob: str) -> bool:
        """True with the probability the knob ``knob`` holds (one roll of the shared dice)."""
        with self.lock:
            return self.rng.random() < getattr(self.knobs, knob)

    def record_fault(self, op: str, kind: str) -> None:
        with self.lock:
            self.stats.faults[kind] += 1
            self.stats.faults_by_op[f"{op}:{kind}"] += 1

    def fault(self, request: web.Request, op: str) -> web.StreamResponse | None:
        """Count this attempt at ``op``, then roll the dice: a fault response, a drop, or None."""
        with self.lock:
            self.stats.requests_by_op[op] += 1
            rolled = roll(self.knobs, self.rng, op)
            if rolled is None:
                return None
            kind, ingress = rolled
            self.stats.faults[kind] += 1
            self.stats.faults_by_op[f"{op}:{kind}"] += 1
            retry_after = self.knobs.retry_after
        return fault_response(request, kind, ingress=ingress, retry_after=retry_after)

    def unauthorized(self, what: str) -> web.Response:
        self.count("unauthorized")
        return json_response(
            {
                "detail": f"Missing or malformed Authorization header for {what}; "
                "send 'Authorization: Key <FAL_KEY>'"
            },
            401,
        )
