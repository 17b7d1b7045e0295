"""The contract every backend keeps: a validated request in, verified images out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..contracts.base import BriaRequest, BriaResponse
from ..journal import RequestJournal

if TYPE_CHECKING:
    from ..journal import RequestJournal

__all__ = ["Backend", "BackendResult", "OutputImage"]


@dataclass(frozen=True, slots=True)
class OutputImage:
    """One output image, downloaded (or rendered) and verified to decode."""

    data: bytes
    content_type: str
    width: int
    height: int
    url: str | None = None
    """Where the backend published it (fal CDN URL); ``None`` for inline/local outputs."""


@dataclass(frozen=True, slots=True)
class BackendResult:
    """What a backend returns for one request: fal's response plus the verified bytes."""

    endpoint_id: str
    backend: str
    request_id: str
    response: BriaResponse
    images: list[OutputImage]
    seed: int | None
    cost_usd: float
    duration_s: float
    attempts: int = 1
    retries: list[str] = field(default_factory=list)
    """One short reason per retry that happened (e.g. ``"submit: HTTP 429"``)."""
    reattached: bool = False
    """True when the result came from a request submitted by an earlier process."""


@runtime_checkable
class Backend(Protocol):
    """A way to run Bria requests. ``FalBackend`` and ``LocalBackend`` implement it."""

    name: str

    async def run(
        self,
        request: BriaRequest,
        *,
        journal: RequestJournal | None = None,
        on_service_done: Callable[[], None] | None = None,
    ) -> BackendResult:
        """Run one validated request to completion and return verified outputs.

        ``journal`` records an accepted remote request id before it is awaited, so a
        re-run re-attaches instead of paying again; a backend with nothing remote to
        record ignores it. ``on_service_done`` is called once the request no longer
        occupies the service (fal reports it finished) and only its result remains to
        be downloaded and verified: a caller bounding requests in flight may send the
        next one then. A backend may not call it at all; ``run_batch`` still drives a
        backend whose ``run`` does not take it (its slot then ends with the call).

        Raises a :class:`~bria_dagster.errors.BriaError` subclass on failure.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and other resources."""
        ...
