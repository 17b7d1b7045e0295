"""An httpx transport of many small connection pools: cheap keep-alive for many connections."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ShardedPool"]


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Any) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            await self._stream.aclose()
        finally:
            if release is not None:
                release()


class ShardedPool(httpx.AsyncBaseTransport):
    """``max_connections`` connections spread over several small pools, each request to
    the pool with the most free connections.

    httpcore's pool re-examines every connection it holds (keep-alive expiry, a socket
    readability check, and a quadratic idle count) whenever a request starts or ends,
    so one pool of N connections costs O(N^2) work per request. Several pools of a few
    connections each keep every connection alive at a fraction of that cost. Their
    sizes add up to ``max_connections`` exactly: that is the most connections open at
    once, to every host together. (A pool whose keep-alive limit is below its
    connection limit would close the surplus after each burst and pay a new TLS
    handshake for it on the next one, so every connection is kept alive.)
    """

    def __init__(self, max_connections: int, per_shard: int = 4, **transport: Any) -> None:
        full, rest = divmod(max_connections, per_shard)
        self._sizes = [per_shard] * full + ([rest] if rest else [])
        self._shards = [
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
                ),
                **transport,
            )
            for size in self._sizes
        ]
        self._busy = [0] * len(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        index = max(range(len(busy)), key=lambda i: self._sizes[i] - busy[i])
        busy[index] += 1

        def release() -> None:
            busy[index] -= 1

        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        if not isinstance(response.stream, httpx.AsyncByteStream):  # pragma: no cover
            release()
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
