"""A local ``catalog_dir`` must exist when definitions load, not at the sensor's first tick."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigurationError

__all__ = ["require_catalog_dir"]


def require_catalog_dir(catalog_dir: str, *, owner: str, written: str | None = None) -> None:
    """A local ``catalog_dir`` must be an existing folder, or :class:`ConfigurationError`
    names it (``owner``: who set it; ``written``: the value as the user wrote it, when
    ``catalog_dir`` was resolved from it). fsspec URLs (s3://, gs://, ...) are not checked:
    that would be a network call, with credentials, on every code-location load."""
    parts = urlsplit(catalog_dir)
    if parts.scheme not in ("", "file"):
        return
    folder = Path(parts.path if parts.scheme == "file" else catalog_dir)
    if not folder.is_dir():
        shown = written if written is not None else catalog_dir
        raise ConfigurationError(
            f"{owner}: catalog_dir {shown!r} is not a folder ({folder.absolute()} does not "
            "exist): create it (the sensor adds one partition per catalog file put there) or "
            "set catalog_dir to an existing folder or an fsspec URL"
        )
