"""Request-level retries: the one retry layer of every network operation.

Each call handed to :func:`with_retries` is ONE HTTP attempt (the fal backend
makes its calls with its own httpx client, never through fal-client's retrying
helpers), so ``RetryPolicy.max_attempts`` is the number of HTTP attempts per
operation. Retried, with capped exponential backoff and jitter: 429 (honouring
``Retry-After``), 408, 425, every 5xx, connection resets and timeouts. Other 4xx
(422 validation errors above all) are final and surface fal's ``detail``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from ..errors import FalRequestError, RetriesExhaustedError, redact

__all__ = ["RetryLog", "RetryPolicy", "retry_reason", "with_retries"]

logger = logging.getLogger("bria_dagster.client.retry")
T = TypeVar("T")
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RetryPolicy(BaseModel):
    """How hard to try one network operation before giving up."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per operation.")
    base_delay_s: float = Field(default=0.5, gt=0, description="First backoff delay.")
    max_delay_s: float = Field(default=30.0, gt=0, description="Cap on one backoff delay.")
    max_retry_after_s: float = Field(
        default=120.0, gt=0, description="Cap on a server-requested Retry-After wait."
    )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): Retry-After wins, else jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class RetryLog:
    """Every retry of one request, for records and metadata."""

    reasons: list[str] = field(default_factory=list)
    attempts: int = 0


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return None


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, httpx.HTTPStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        from datetime import UTC, datetime

        return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_reason(exc: BaseException, *, retry_not_found: bool = False) -> str | None:
    """Why ``exc`` is worth retrying (a short text), or ``None`` when it is final."""
    status = _status_of(exc)
    if status is not None:
        if status in RETRY_STATUS or status >= 500 or (retry_not_found and status == 404):
            return f"HTTP {status}"
        return None
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return f"connection error ({type(exc).__name__})"
    return None


def _detail(exc: BaseException) -> Any:
    """fal's ``detail`` from an error body (JSON), else the start of the body."""
    if not isinstance(exc, httpx.HTTPStatusError):
        return str(exc)
    try:
        body = exc.response.json()
    except ValueError:
        return exc.response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


async def with_retries(
    operation: str,
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    log: RetryLog,
    *,
    retry_not_found: bool = False,
    secrets: list[str] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Await ``call()`` until it succeeds, retrying transient failures per ``policy``.

    Raises :class:`FalRequestError` for a final client error (fal's ``detail``
    included) and :class:`RetriesExhaustedError` once attempts run out.
    """
    for attempt in range(1, policy.max_attempts + 1):
        log.attempts += 1
        try:
            return await call()
        except Exception as exc:
            reason = retry_reason(exc, retry_not_found=retry_not_found)
            if reason is None:
                status = _status_of(exc)
                if status is None:
                    raise
                detail = _detail(exc)
                raise FalRequestError(
                    f"{operation} failed with HTTP {status}: {redact(str(detail), secrets)}; "
                    "this is not retried: fix the request",
                    status_code=status,
                    detail=detail,
                ) from None
            log.reasons.append(f"{operation}: {reason}")
            if attempt == policy.max_attempts:
                raise RetriesExhaustedError(
                    f"{operation} still failing after {attempt} attempts (last: {reason}); "
                    "the service may be degraded: re-run later or raise retry.max_attempts"
                ) from None
            delay = policy.delay(attempt, _retry_after(exc))
            logger.warning(
                "retrying %s in %.2fs (attempt %d/%d): %s",
                operation,
                delay,
                attempt,
                policy.max_attempts,
                reason,
            )
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
