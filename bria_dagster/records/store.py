"""Content-addressed image storage: every image stored once, by sha256 of its bytes.

The base is a local folder by default or any fsspec URL (``s3://``, ``gs://``,
``memory://``, ``file://``). Writes are atomic: a local write goes to a temporary
name in the same folder and is renamed into place; an object-store write is a
single PUT. No partial file is ever visible under its final name.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import storage_access

__all__ = ["ImageStore", "StoredImage", "extension_for", "write_bytes"]

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/tiff": "tiff",
}


def extension_for(content_type: str) -> str:
    """The file extension of an image's content type (``bin`` for one not listed)."""
    return _EXTENSIONS.get(content_type, "bin")


@dataclass(frozen=True, slots=True)
class StoredImage:
    uri: str
    sha256: str
    size: int
    content_type: str


class ImageStore:
    """Stores image bytes under ``<base>/sha256/<ab>/<sha256>.<ext>``."""

    def __init__(self, base: str | os.PathLike[str] = "bria_data/images") -> None:
        base_str = os.fspath(base)
        self.fs, root = fsspec.core.url_to_fs(base_str)
        self._local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self._prefix = "" if self._local else f"{protocol}://"
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"ImageStore({self.base_uri!r})"

    @property
    def base_uri(self) -> str:
        return self._prefix + self.root if not self._local else self.root

    def _path(self, sha256: str, content_type: str) -> str:
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}.{extension_for(content_type)}"

    def uri_for(self, sha256: str, content_type: str) -> str:
        path = self._path(sha256, content_type)
        return path if self._local else self._prefix + path.lstrip("/")

    def put(self, data: bytes, content_type: str) -> StoredImage:
        """Store ``data`` (once) and return where it lives."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha, content_type)
        if not self._exists(path):
            # Atomic (identical content if two writers race); one PUT on an object store.
            with storage_access(self.uri_for(sha, content_type), "store image"):
                write_bytes(self.fs, path, data)
        return StoredImage(self.uri_for(sha, content_type), sha, len(data), content_type)

    def _exists(self, path: str) -> bool:
        if self._local:
            return os.path.exists(path)
        with storage_access(self._url(path), "look up image"):
            return self.fs.exists(path)

    def _find(self, sha256: str, content_type: str | None = None) -> str:
        types = (*_EXTENSIONS, "application/octet-stream")
        if content_type is not None:  # the likely one first
            types = (content_type, *(t for t in types if t != content_type))
        for candidate in types:
            path = self._path(sha256, candidate)
            if self._exists(path):
                return path
        raise FileNotFoundError(
            f"no image with sha256 {sha256} in {self.base_uri}; it was never stored here "
            "or the store was cleaned"
        )

    def exists(self, sha256: str, content_type: str | None = None) -> bool:
        """Whether an image with this sha256 is stored (``content_type``: where to look first)."""
        try:
            self._find(sha256, content_type)
        except FileNotFoundError:
            return False
        return True

    def get(self, sha256_or_uri: str) -> bytes:
        """The bytes of an image, by sha256 or by the uri :meth:`put` returned."""
        if len(sha256_or_uri) == 64 and all(c in "0123456789abcdef" for c in sha256_or_uri):
            path = self._find(sha256_or_uri)
        else:
            path = sha256_or_uri
        with storage_access(self._url(path), "read image"):
            return self.fs.cat_file(path)

    def _url(self, path: str) -> str:
        """``path`` as users see it (with its ``s3://``) for messages."""
        return path if self._local or "://" in path else self._prefix + path.lstrip("/")


def write_bytes(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, durable: bool = True
) -> None:
    """Write ``data`` at ``path`` so that no reader ever sees part of it: a local file is
    written under a temporary name and renamed into place, an object is one PUT.

    ``durable=False`` skips the local fsync: for derived data that a crash may lose."""
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
