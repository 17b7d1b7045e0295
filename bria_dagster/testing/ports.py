"""Free loopback ports, for addresses that must be known before a server starts."""

from __future__ import annotations

import socket

__all__ = ["reserve_port"]


def reserve_port() -> int:
    """A free TCP port on 127.0.0.1 (for env vars that must be set before the server starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
