"""fal's queue protocol, over one HTTP client of ours with one retry layer.

Why the HTTP calls are ours and not fal-client's: fal-client 1.0 retries every
call it makes (submit, status, result, cancel, the upload calls) up to 10 times
on its own, and has no public setting to turn that off, to lower it, or to give
it an HTTP client with bounded connections. Under our retries that made one
network operation up to ~60 HTTP attempts, and changing it meant reaching into
fal-client's private names, which breaks silently on any release. So every call
fal-client would retry goes through ONE httpx client of ours, retried by
:func:`~bria_dagster.client.retry.with_retries` alone: ``retry.max_attempts`` is the
number of HTTP attempts per operation, and the client's pool
(``max_connections``) bounds every connection it opens. The calls are fal's
documented queue protocol (POST ``{queue}/{endpoint}``; GET the status and the
response URLs it returns, or follow the status as server-sent events at
``{status_url}/stream``; PUT the cancel URL) and its CDN upload (a token from
``{rest}/storage/auth/token``, then POST ``{cdn}/files/upload``), plus plain GETs of
the result files.

fal-client keeps what it does well, through its public names only: finding the
credentials (``FAL_KEY``, ``FAL_KEY_ID``/``FAL_KEY_SECRET``, a ``fal auth login``
session), the hosts (``QUEUE_URL_FORMAT``, ``REST_URL``, ``CDN_URL``, which it
derives from ``FAL_RUN_HOST``/``FAL_QUEUE_RUN_HOST``; read at call time), and a
known request's URLs for re-attaching (``AsyncRequestHandle.from_request_id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import fal_client.client
import httpx
from fal_client.auth import MissingCredentialsError, fetch_auth_credentials_async
from httpx_sse import EventSource, SSEError

from ..._version import __version__
from ...errors import ConfigurationError, OutputVerificationError, redact
from ..retry import RetryLog, RetryPolicy, retry_reason, with_retries
from .http_pool import ShardedPool

__all__ = ["FalQueueClient", "Queued"]

logger = logging.getLogger("bria_dagster.fal")
T = TypeVar("T")

# fal-client's limits for queue calls; a stall at the TLS layer still ends in a timeout.
_QUEUE_TIMEOUT = httpx.Timeout(120.0, connect=30.0)
_FILE_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True, slots=True)
class Queued:
    """A request fal accepted: its id and its queue-protocol URLs."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


class FalQueueClient:
    """Submit, status, result, cancel, CDN upload and result downloads; each operation
    retried per ``retry``, all of them over one pool of ``max_connections`` connections.

    Args:
        key: the fal key; ``None`` lets fal-client find credentials (``FAL_KEY``...).
        retry: ``max_attempts`` is the number of HTTP attempts per operation, all told.
        max_connections: the most HTTPS connections open at once, to fal and its file
            CDN together; all of them stay alive between requests.
        max_status_streams: the most status streams open at once (each holds a
            connection for its whole wait; a request beyond it polls); by default all
            but a fifth of ``max_connections``, which stays free for submits, results
            and downloads.
        max_output_bytes: refuse result files larger than this.
    """

    def __init__(
        self,
        key: str | None,
        *,
        retry: RetryPolicy,
        max_connections: int,
        max_output_bytes: int,
        max_status_streams: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.retry = retry
        self.max_output_bytes = max_output_bytes
        self.secrets = [key] if key else []
        """What error messages must never show (the key, a fetched token)."""
        self._authorization: str | None = f"Key {key}" if key else None
        self._cdn_token: tuple[str, float] | None = None  # (Authorization value, expiry)
        self._cdn_token_lock = asyncio.Lock()
        self.streams_status = True
        """Whether status streams are tried (off once the server answers one with 404/405)."""
        if max_status_streams is None:
            max_status_streams = max_connections - max(1, max_connections // 5)
        self.max_status_streams = max_status_streams
        self._open_streams = 0
        # The key goes on queue and storage calls only, never to a result file's host.
        self._http = httpx.AsyncClient(
            timeout=_FILE_TIMEOUT,
            transport=ShardedPool(max_connections),
            headers={"User-Agent": f"bria-dagster/{__version__}"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one attempt each; with_retries decides about the next ---------------------------

    async def _fal_authorization(self) -> str:
        if self._authorization is None:
            try:
                credentials = await fetch_auth_credentials_async()
            except MissingCredentialsError as exc:
                raise ConfigurationError(f"no fal credentials: {exc}") from None
            self.secrets.append(credentials.token)
            self._authorization = credentials.header_value
        return self._authorization

    async def _fal_call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One attempt of a queue or storage call, authorised with the fal key."""
        headers = {"Authorization": await self._fal_authorization()}
        response = await self._http.request(
            method, url, headers=headers, timeout=_QUEUE_TIMEOUT, **kwargs
        )
        response.raise_for_status()
        return response

    async def retried(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        log: RetryLog,
        *,
        retry_not_found: bool = False,
    ) -> T:
        return await with_retries(
            operation,
            call,
            self.retry,
            log,
            retry_not_found=retry_not_found,
            secrets=self.secrets,
        )

    # -- the queue protocol -------------------------------------------------------------

    def known(self, endpoint_id: str, request_id: str) -> Queued:
        """The URLs of a request accepted earlier (a journaled one, to re-attach to)."""
        # fal-client's handle is used for its URLs only: its calls retry on their own.
        handle = fal_client.AsyncRequestHandle.from_request_id(self._http, endpoint_id, request_id)
        return Queued(handle.request_id, handle.status_url, handle.response_url, handle.cancel_url)

    async def submit(self, endpoint_id: str, arguments: dict[str, Any], log: RetryLog) -> Queued:
        url = fal_client.client.QUEUE_URL_FORMAT + endpoint_id
        response = await self.retried(
            "submit", lambda: self._fal_call("POST", url, json=arguments), log
        )
        body = response.json()
        return Queued(
            body["request_id"], body["status_url"], body["response_url"], body["cancel_url"]
        )

    async def status(self, queued: Queued, log: RetryLog) -> dict[str, Any]:
        response = await self.retried(
            "status",
            lambda: self._fal_call("GET", queued.status_url, params={"logs": "false"}),
            log,
        )
        body: dict[str, Any] = response.json()
        return body

    async def watch(self, queued: Queued, log: RetryLog) -> dict[str, Any] | None:
        """Follow the request's status stream until COMPLETED; that status, or None when
        there is no stream or it ended early (the caller then polls :meth:`status`).

        fal's ``{status_url}/stream`` sends the status object as a server-sent event at
        every change and closes after COMPLETED: one HTTP request for the whole wait
        instead of a poll every few hundred milliseconds. It is one attempt, counted in
        ``log``, and never retried: polls, retried per ``retry``, take over from a failed
        or broken stream. A 404 or 405 means the server has no stream endpoint, and this
        client polls from then on. So does a request that would open more than
        ``max_status_streams`` at once.
        """
        if not self.streams_status or self._open_streams >= self.max_status_streams:
            return None
        log.attempts += 1
        completed: dict[str, Any] | None = None
        self._open_streams += 1
        try:
            headers = {
                "Authorization": await self._fal_authorization(),
                "Accept": "text/event-stream",
                "Cache-Control": "no-store",
            }
            async with self._http.stream(
                "GET",
                queued.status_url + "/stream",
                params={"logs": "0"},
                headers=headers,
                timeout=_QUEUE_TIMEOUT,
            ) as response:
                if response.status_code in (404, 405):
                    self.streams_status = False
                    logger.info("fal has no status stream here; polling the status instead")
                    return None
                response.raise_for_status()
                # Read to the end (fal closes right after COMPLETED), so the connection
                # goes back to the pool instead of being closed with the body unread.
                async for event in EventSource(response).aiter_sse():
                    status = json.loads(event.data)
                    if status.get("status") == "COMPLETED":
                        completed = status
        except (httpx.HTTPError, SSEError, ValueError) as exc:
            reason = retry_reason(exc) or type(exc).__name__
            log.reasons.append(f"status stream: {reason}")
            logger.info(
                "status stream of fal request %s failed (%s); polling instead",
                queued.request_id,
                reason,
            )
        finally:
            self._open_streams -= 1
        return completed

    async def result(self, queued: Queued, log: RetryLog) -> dict[str, Any]:
        response = await self.retried(
            "result", lambda: self._fal_call("GET", queued.response_url), log
        )
        body: dict[str, Any] = response.json()
        return body

    async def cancel(self, queued: Queued) -> None:
        """Best effort within 10 s (the request may already be done); not counted."""
        cancel = self.retried(
            "cancel", lambda: self._fal_call("PUT", queued.cancel_url), RetryLog()
        )
        try:
            await asyncio.shield(asyncio.wait_for(cancel, timeout=10))
        except Exception as exc:
            logger.warning(
                "could not cancel fal request %s: %s",
                queued.request_id,
                redact(str(exc), self.secrets),
            )

    # -- files --------------------------------------------------------------------------

    async def upload(self, data: bytes, content_type: str, log: RetryLog) -> str:
        """fal's CDN upload (what fal-client's ``upload`` does first): the file's URL."""
        authorization = await self._upload_authorization(log)
        url = fal_client.client.CDN_URL + "/files/upload"
        headers = {"Authorization": authorization, "Content-Type": content_type}

        async def post() -> str:
            response = await self._http.post(
                url, content=data, headers=headers, timeout=_QUEUE_TIMEOUT
            )
            response.raise_for_status()
            return str(response.json()["access_url"])

        return await self.retried("upload", post, log)

    async def _upload_authorization(self, log: RetryLog) -> str:
        """A CDN token (one per client, renewed a minute before it expires)."""
        async with self._cdn_token_lock:
            if self._cdn_token is None or self._cdn_token[1] < time.time() + 60:
                url = fal_client.client.REST_URL + "/storage/auth/token?storage_type=fal-cdn-v3"
                response = await self.retried(
                    "upload token", lambda: self._fal_call("POST", url, json={}), log
                )
                body = response.json()
                expires = datetime.fromisoformat(body["expires_at"]).timestamp()
                self._cdn_token = (f"{body['token_type']} {body['token']}", expires)
            return self._cdn_token[0]

    async def download(self, url: str, log: RetryLog) -> bytes:
        """A result file (no key sent), retried; a 404 too: CDN files can lag the result."""
        return await self.retried(
            "download", lambda: self._fetch_file(url), log, retry_not_found=True
        )

    async def _fetch_file(self, url: str) -> bytes:
        async with self._http.stream("GET", url) as response:
            response.raise_for_status()
            declared = int(response.headers.get("content-length") or 0)
            if declared > self.max_output_bytes:
                raise OutputVerificationError(
                    f"result file {url} is {declared:,} bytes, over max_output_bytes "
                    f"({self.max_output_bytes:,})"
                )
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_output_bytes:
                    raise OutputVerificationError(
                        f"result file {url} exceeds max_output_bytes ({self.max_output_bytes:,})"
                    )
                chunks.append(chunk)
        return b"".join(chunks)
