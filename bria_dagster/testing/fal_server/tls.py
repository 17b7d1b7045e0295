"""TLS with a throwaway CA, and pointing the real fal-client at the server.

fal-client reads ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` when it is imported and
hard-codes its upload hosts (``REST_URL``, ``CDN_URL``). Either set
:meth:`FalTestServer.env` in the environment before ``import fal_client`` (a subprocess,
or the standalone mode), or call :func:`point_fal_client_at` on an already imported
fal-client. httpx (0.28) builds its SSL context from ``SSL_CERT_FILE`` when a client is
created (``trust_env`` is on by default), so the CA file must be in the environment
before fal-client makes its first request.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trustme

__all__ = ["ServerCertificate", "client_env", "point_fal_client_at"]

_LOOPBACK = "127.0.0.1,localhost"


class Served(Protocol):
    """What :func:`point_fal_client_at` reads of a server (a ``FalTestServer``)."""

    @property
    def base_url(self) -> str: ...

    @property
    def ca_path(self) -> str: ...


class ServerCertificate:
    """A new CA and a certificate for 127.0.0.1 / localhost signed by it.

    The CA's PEM is written to ``ca_path`` (a temporary folder when None, removed by
    :meth:`cleanup`): what a client trusts through ``SSL_CERT_FILE``.
    """

    def __init__(self, ca_path: Path | None) -> None:
        ca = trustme.CA()
        self._cert = ca.issue_cert("127.0.0.1", "localhost")
        self._tmpdir: str | None = None
        if ca_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="fal-test-ca-")
            ca_path = Path(self._tmpdir) / "ca.pem"
        else:
            ca_path.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_path))
        self.ca_path = str(ca_path)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def client_env(port: int, ca_path: str, key: str) -> dict[str, str]:
    """The environment of a process whose fal-client (imported afterwards) calls the server."""
    host = f"127.0.0.1:{port}"
    return {
        "FAL_RUN_HOST": host,
        "FAL_QUEUE_RUN_HOST": host,
        "SSL_CERT_FILE": ca_path,
        "FAL_KEY": key,
        "NO_PROXY": _LOOPBACK,
    }


def point_fal_client_at(server: Served) -> Callable[[], None]:
    """Aim an already imported ``fal_client`` at ``server``; returns an undo function.

    Sets the module's URL settings (``QUEUE_URL_FORMAT``, ``RUN_URL_FORMAT``,
    ``REST_URL``, ``CDN_URL``) and ``SSL_CERT_FILE`` / ``NO_PROXY`` in ``os.environ``:
    the values fal-client would compute from ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST``
    at import, plus the upload hosts no env var reaches. This is configuration of
    fal-client, not a change to its code. Clients created before the call keep
    their old SSL context; create the ``AsyncClient`` afterwards.
    """
    import fal_client.client as fal_module

    base = server.base_url
    values = {
        "QUEUE_URL_FORMAT": base + "/",
        "RUN_URL_FORMAT": base + "/",
        "REST_URL": base,
        "CDN_URL": base,
    }
    saved_attrs = {name: getattr(fal_module, name) for name in values}
    env = {"SSL_CERT_FILE": server.ca_path, "NO_PROXY": _LOOPBACK}
    saved_env = {name: os.environ.get(name) for name in env}
    for name, value in values.items():
        setattr(fal_module, name, value)
    os.environ.update(env)

    def undo() -> None:
        for name, value in saved_attrs.items():
            setattr(fal_module, name, value)
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    return undo
