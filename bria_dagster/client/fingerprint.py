"""Request fingerprints: what makes two requests the same paid work.

A fingerprint is sha256 over the endpoint, the identity of each input and the
canonical parameters. The runner sends one request per fingerprint in a batch, the
journal re-attaches by it after a crash, and reuse finds earlier records by it. An
input's identity is the sha256 of its bytes when it is local (a file is read here),
else its URL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .contracts.base import BriaRequest

__all__ = ["fingerprint_of", "input_fingerprint", "request_fingerprint"]


def input_fingerprint(value: str | Path | bytes) -> str:
    """A stable identity of one input: sha256 of its bytes when local, else its URL.

    Remote URLs are identified by their text (fetching them to hash would cost a
    download per request); data URIs and local files by their content.
    """
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, Path):
        return "sha256:" + _file_sha256(value)
    if value.startswith("data:"):
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return "url:" + value


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def request_fingerprint(request: BriaRequest) -> str:
    """sha256 over endpoint, input identities and canonical parameters.

    Two requests with the same fingerprint would be billed for the same work;
    the runner sends only one of them, and the journal re-attaches to it.
    """
    inputs = {k: input_fingerprint(v) for k, v in request.inputs().items()}
    return fingerprint_of(request.endpoint_id, inputs, request.parameters())


def fingerprint_of(endpoint_id: str, input_ids: dict[str, str], parameters: dict[str, Any]) -> str:
    """The fingerprint from its parts: input identities as :func:`input_fingerprint` gives them.

    Lets a caller that knows an input's identity (its sha256) fingerprint a
    request without reading the input.
    """
    canonical = {"endpoint": endpoint_id, "inputs": input_ids, "parameters": parameters}
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
