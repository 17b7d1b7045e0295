"""Latency and fault injection: the knobs, and the faults a roll of the dice answers with.

Rates are probabilities per HTTP attempt at an operation named in ``fault_ops``. Faults
are decided before any state changes, so a faulted submit never creates a job; only
``rate_drop_after_submit`` creates the job and then loses the reply.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any, NoReturn

from aiohttp import web

from .http import json_response

__all__ = ["FAULT_KINDS", "FAULT_OPS", "Dropped", "Knobs", "drop", "fault_response", "roll"]

FAULT_KINDS = ("429", "5xx", "drop", "missing_once", "drop_after_submit", "stream_cut")
FAULT_OPS = ("submit", "status", "stream", "result", "file", "upload")

_NGINX_502 = (
    "<html><head><title>502 Bad Gateway</title></head><body>"
    "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


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
    rate_stream_cut: float = 0.0  # per status stream: cut after its first event
    retry_after: float = 0.2  # Retry-After seconds on 429
    seed: int | None = None  # for the fault dice and default seeds
    validate_at_submit: bool = True  # schema errors: 422 at submit, else a failed job
    max_files: int = 20_000  # files kept (oldest evicted first); 0 = unlimited
    fault_ops: str = "submit,status,stream,result,file"  # where rates apply (FAULT_OPS, comma-sep)
    status_stream: bool = True  # serve .../status/stream; False answers 404 as a server without it
    cpu_per_request_ms: float = 0.0  # CPU time spent on each HTTP request, as TLS and JSON cost

    def update(self, **changes: Any) -> None:
        """Apply ``changes`` after checking all of them (nothing changes if one is wrong)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in fields:
                raise ValueError(f"unknown knob {name!r}; known: {', '.join(fields)}")
            if name.startswith("rate_") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, got {value!r}")
            if name in ("latency", "retry_after", "cpu_per_request_ms") and float(value) < 0:
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


class Dropped(web.HTTPException):
    """Raised after aborting the transport: no response goes out."""

    status_code = 499


def roll(knobs: Knobs, rng: random.Random, op: str) -> tuple[str, bool] | None:
    """The fault for one attempt at ``op``: its kind (``drop``, ``429``, ``5xx``) and whether
    a 5xx comes from the ingress; None for no fault."""
    if op not in knobs.fault_ops.split(","):
        return None
    dice = rng.random()
    if dice < knobs.rate_drop:
        kind = "drop"
    elif dice < knobs.rate_drop + knobs.rate_429:
        kind = "429"
    elif dice < knobs.rate_drop + knobs.rate_429 + knobs.rate_5xx:
        kind = "5xx"
    else:
        return None
    return kind, rng.random() < 0.5


def drop(request: web.Request) -> NoReturn:
    """Close the connection without an answer (the client sees a reset)."""
    if request.transport is not None:
        request.transport.abort()
    raise Dropped


def fault_response(
    request: web.Request, kind: str, *, ingress: bool, retry_after: float
) -> web.Response:
    """The answer to a faulted attempt. A 5xx from the ``ingress`` looks like nginx (fal-client
    retries it on its own); otherwise it carries ``x-fal-request-id`` (fal-client does not)."""
    if kind == "drop":
        drop(request)
    if kind == "429":
        return json_response(
            {"detail": "Too many requests; slow down and retry after the given delay"},
            429,
            headers={"Retry-After": f"{retry_after:g}"},
        )
    if ingress:
        return web.Response(status=502, text=_NGINX_502, content_type="text/html")
    return json_response(
        {"detail": "Service temporarily unavailable (injected fault)"},
        503,
        headers={"x-fal-request-id": str(uuid.uuid4())},
    )
