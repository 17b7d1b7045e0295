"""The HTTP details every route shares: JSON answers and fal's ``Authorization: Key``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["auth_key", "json_response"]


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def auth_key(request: web.Request) -> str | None:
    """The API key of ``Authorization: Key <key>``, or None when it is missing or malformed."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "key" and token.strip():
        return token.strip()
    return None
