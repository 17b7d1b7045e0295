"""Result files and uploads: what ``https://.../files/<name>`` serves, fal's two upload
protocols (the CDN's ``/storage/auth/token`` + ``/files/upload``, the older
``/storage/upload/initiate`` + PUT), and where a job's input bytes come from.

Only the newest ``max_files`` files are kept (``files_evicted`` counts the rest), so long
soak runs stay small. A result file may 404 once (``rate_missing_once``), as a file not
yet replicated does.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .http import auth_key, json_response
from .schema import invalid
from .state import ServerState

__all__ = ["FileStore"]


@dataclasses.dataclass
class _File:
    data: bytes
    content_type: str
    missing_once: bool = False


class FileStore:
    """The server's files, and the routes that serve and receive them."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._files: collections.OrderedDict[str, _File] = collections.OrderedDict()
        self._cdn_tokens: set[str] = set()

    def store(self, data: bytes, content_type: str, suffix: str, *, faulty: bool) -> str:
        """Keep ``data``; return its URL. A ``faulty`` file may 404 once."""
        name = uuid.uuid4().hex + suffix
        missing = faulty and self._state.chance("rate_missing_once")
        self._put(name, _File(data, content_type, missing))
        return f"{self._state.base_url}/files/{name}"

    def read_input(self, field: str, url: str) -> bytes:
        """The bytes of a job's input: a data URI or a file on this server (else a 422, as
        fal answers for a URL it cannot download)."""
        if url.startswith("data:"):
            header, sep, payload = url[5:].partition(",")
            if not sep:
                raise invalid(field, f"Malformed data URI in {field}", "image_load_error")
            try:
                return (
                    base64.b64decode(payload, validate=True)
                    if ";base64" in header
                    else (payload.encode())
                )
            except (binascii.Error, ValueError):
                raise invalid(field, f"Invalid base64 in {field}", "image_load_error") from None
        parsed = urlsplit(url)
        local = parsed.hostname in ("127.0.0.1", "localhost") and parsed.port == self._state.port
        parts = [p for p in parsed.path.split("/") if p]
        entry = self._get(parts[1]) if local and len(parts) == 2 else None
        if entry is None or parts[0] != "files":
            raise invalid(
                field,
                f"Failed to download the file from {url[:200]!r}: only data URIs and files "
                "on this server are reachable",
                "file_download_error",
            )
        return entry.data

    def _get(self, name: str) -> _File | None:
        with self._state.lock:
            return self._files.get(name)

    def _put(self, name: str, entry: _File) -> None:
        """Keep ``entry`` (from any thread); evict the oldest files beyond ``max_files``."""
        with self._state.lock:
            self._files[name] = entry
            limit = self._state.knobs.max_files
            while limit and len(self._files) > limit:
                self._files.popitem(last=False)
                self._state.stats.files_evicted += 1

    # ------------------------------------------------------------------ routes

    async def get_file(self, request: web.Request, name: str) -> web.StreamResponse:
        self._state.count("file_gets")
        fault = self._state.fault(request, "file")
        if fault is not None:
            return fault
        entry = self._get(name)
        if entry is None:
            return json_response({"detail": f"File {name!r} not found"}, 404)
        if entry.missing_once:
            entry.missing_once = False
            self._state.record_fault("file", "missing_once")
            return json_response({"detail": f"File {name!r} not found (not yet replicated)"}, 404)
        return web.Response(body=entry.data, content_type=entry.content_type)

    async def storage(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if auth_key(request) is None:
            return self._state.unauthorized("storage")
        base_url = self._state.base_url
        if parts == ["auth", "token"] and request.method == "POST":
            token = secrets.token_urlsafe(16)
            self._cdn_tokens.add(token)
            expires = datetime.now(UTC) + timedelta(hours=1)
            return json_response(
                {
                    "token": token,
                    "token_type": "Bearer",
                    "base_url": base_url,
                    "expires_at": expires.isoformat(),
                }
            )
        if parts == ["upload", "initiate"] and request.method == "POST":
            body = await request.json()
            name = uuid.uuid4().hex + "-" + Path(str(body.get("file_name") or "upload.bin")).name
            self._put(name, _File(b"", str(body.get("content_type") or "")))
            return json_response(
                {"upload_url": f"{base_url}/_upload/{name}", "file_url": f"{base_url}/files/{name}"}
            )
        return json_response({"detail": f"Not found: {request.method} {request.path}"}, 404)

    async def storage_put(self, request: web.Request, name: str) -> web.StreamResponse:
        initiated = self._get(name)
        if initiated is None:
            return json_response({"detail": f"No upload initiated for {name!r}"}, 404)
        data = await request.read()
        content_type = request.headers.get("Content-Type") or initiated.content_type
        self._put(name, _File(data, content_type or "application/octet-stream"))
        self._state.count("uploads")
        return web.Response(status=200)

    async def cdn_upload(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._cdn_tokens:
            self._state.count("unauthorized")
            return json_response(
                {"detail": "Invalid or missing CDN token; get one from /storage/auth/token"}, 401
            )
        fault = self._state.fault(request, "upload")
        if fault is not None:
            return fault
        data = await request.read()
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        file_name = Path(request.headers.get("X-Fal-File-Name") or "upload.bin").name
        url = self.store(data, content_type, "-" + file_name, faulty=False)
        self._state.count("uploads")
        return json_response(
            {"access_url": url, "content_type": content_type, "file_name": file_name}
        )
