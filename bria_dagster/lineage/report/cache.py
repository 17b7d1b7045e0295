"""The audit report's cache: what the last page was made from, and its parts by content hash.

An hourly run of a batch that did not change should not rebuild its page, and a batch
where a few products changed should not re-read every image. Both are kept in the
pipeline's storage, beside the batch's reports, under
``<base>/reports/<pipeline>/.cache/``:

* ``<batch>.json``, the manifest: the fingerprint of what the page is made from (the
  bytes of every step table of the batch; the renderer: its code and CSS, the package
  version, the thumbnail size, the storage, pipeline and batch shown), the pages written
  from it (URL -> size in bytes) and the report's totals. When the fingerprint and the
  page still match, the page is kept: no image read, no file written.
* ``<batch>.parts.json``: each product's section, keyed by a hash of its rows and its
  place on the page, with its pictures and reusing runs left as slots; and each image's
  thumbnail, keyed by its sha256 (the thumbnail size is in the renderer's fingerprint).
  One file per batch, so a rebuild costs two reads and two writes on S3, not one per
  product.

A cache that is missing, unreadable or of another renderer is no cache: the page is
rebuilt in full (and the cache with it). The cached sections are HTML written into the
page as they are: the cache is trusted as the reports beside it are (whoever can write
there can write the page itself); the thumbnails are checked to be data URIs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import fsspec

from ..._version import __version__
from ...errors import StorageAccessError, storage_access

Thumb = tuple[str, int, int, bool]
"""A thumbnail: ``(data URI, width, height, has_alpha)``."""
Piece = str | dict[str, Any]
"""Part of a product's section: HTML, or a slot filled in when the page is written: a
picture (``{"image": sha256, "alt": text}``) or the run that reused a row
(``{"reused_in": the row's place among the product's rows}``)."""

_READ_CHUNK = 1 << 20
_DATA_URI = re.compile(r"data:image/(?:jpeg|png);base64,[A-Za-z0-9+/]*={0,2}")
"""A thumbnail as :func:`~.thumbnails.thumbnail_data_uri` makes it: nothing that could
leave the ``src`` attribute it is written into."""


def cache_folder(base: str, pipeline: str) -> str:
    """``<base>/reports/<pipeline>/.cache``: where the report cache of ``pipeline`` lives."""
    return f"{base.rstrip('/')}/reports/{pipeline}/.cache"


def renderer_key(thumbnail_px: int, *shown: str) -> str:
    """The fingerprint of how a page is drawn: the report package's own code and CSS, the
    package version, the thumbnail size and what the header shows (``shown``)."""
    text = json.dumps([__version__, thumbnail_px, _renderer_code(), *shown])
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def _renderer_code() -> str:
    """A hash of every module and stylesheet of this package: a change to any of them
    (the page's markup, its CSS, how rows are linked or thumbnails made) is a new renderer."""
    digest = hashlib.sha256()
    for entry in sorted(files(__package__).iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith((".py", ".css")):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return digest.hexdigest()


def tables_key(tables: Sequence[tuple[str, str]]) -> str:
    """The fingerprint of a batch's step tables (``(asset, path)`` each): a hash of their
    bytes. A table rewritten with the same rows keeps it; any changed row (a new
    failure, a changed price, another run reusing it) changes it."""
    digest = hashlib.sha256()
    for asset, path in sorted(tables):
        fs, root = fsspec.core.url_to_fs(path)
        table = hashlib.sha256()
        with storage_access(path, "read record table"), fs.open(root, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                table.update(chunk)
        digest.update(f"{asset}\0{table.hexdigest()}\0".encode())
    return digest.hexdigest()


@dataclass
class ReportParts:
    """Sections and thumbnails of one renderer (see the module's docstring)."""

    renderer: str
    sections: dict[str, list[Piece]] = field(default_factory=dict)
    thumbnails: dict[str, Thumb] = field(default_factory=dict)

    def plain(self) -> dict[str, Any]:
        return {"renderer": self.renderer, "sections": self.sections, "thumbnails": self.thumbnails}

    @classmethod
    def from_plain(cls, data: Any, renderer: str) -> ReportParts:
        """The parts in ``data`` when they are of ``renderer``; else none (ValueError on a
        malformed file)."""
        if not isinstance(data, dict) or data.get("renderer") != renderer:
            return cls(renderer)
        sections, thumbnails = data.get("sections"), data.get("thumbnails")
        if not isinstance(sections, dict) or not isinstance(thumbnails, dict):
            raise ValueError("report parts without sections or thumbnails")
        for pieces in sections.values():
            if type(pieces) is not list:
                raise ValueError("a malformed report section")
            for piece in pieces:
                if type(piece) is not str and not _is_slot(piece):
                    raise ValueError("a malformed report section")
        thumbs: dict[str, Thumb] = {}
        for sha, thumb in thumbnails.items():
            uri, width, height, alpha = thumb
            if not (isinstance(uri, str) and _DATA_URI.fullmatch(uri)):
                raise ValueError("a malformed thumbnail")
            thumbs[sha] = (uri, int(width), int(height), bool(alpha))
        return cls(renderer, sections, thumbs)


def _is_slot(piece: Any) -> bool:
    if type(piece) is not dict:
        return False
    if piece.keys() == {"image", "alt"}:
        return all(isinstance(v, str) for v in piece.values())
    return piece.keys() == {"reused_in"} and type(piece["reused_in"]) is int


@dataclass(frozen=True)
class Manifest:
    """What the last pages of a batch were made from (see the module's docstring)."""

    renderer: str
    tables: str
    pages: dict[str, int]
    """Each page written from these inputs: its URL and size in bytes."""
    summary: dict[str, Any]
    """The report's totals (:meth:`~.model.AuditReport.plain`)."""

    def stale(self, renderer: str, tables: str, url: str, size: int | None) -> str | None:
        """Why the page at ``url`` (``size`` bytes, ``None`` when absent) must be rebuilt
        for these inputs; ``None`` when it is current."""
        if self.tables != tables:
            return "the batch's step tables changed"
        if self.renderer != renderer:
            return "the report's format or thumbnail size changed"
        if url not in self.pages:
            return f"no page of these inputs at {url} yet"
        if size != self.pages[url]:
            return f"the page at {url} is missing or was replaced"
        return None


class ReportCache:
    """The cache files of one batch's report under ``<base>/reports/<pipeline>/.cache``."""

    def __init__(self, base: str, pipeline: str, batch: str) -> None:
        folder = cache_folder(base, pipeline)
        self.manifest_url = f"{folder}/{batch}.json"
        self.parts_url = f"{folder}/{batch}.parts.json"

    def manifest(self) -> Manifest | None:
        """The manifest, or ``None`` when there is none or it does not read."""
        data = _read_json(self.manifest_url)
        try:
            manifest = Manifest(
                renderer=str(data["renderer"]),
                tables=str(data["tables"]),
                pages={str(url): int(size) for url, size in data["pages"].items()},
                summary=dict(data["summary"]),
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        return manifest

    def parts(self, renderer: str) -> ReportParts:
        """The cached parts of ``renderer``; empty when there are none or they do not read."""
        try:
            return ReportParts.from_plain(_read_json(self.parts_url), renderer)
        except (TypeError, ValueError):
            return ReportParts(renderer)

    def save(self, manifest: Manifest, parts: ReportParts, write: _Writer) -> None:
        """Write the parts, then the manifest (last: it vouches for the page)."""
        write(self.parts_url, lambda out: _dump(parts.plain(), out))
        write(self.manifest_url, lambda out: _dump(manifest_plain(manifest), out))


_Writer = Callable[[str, Callable[[Callable[[str], Any]], None]], Any]
"""Writes a file atomically: ``(url, render)`` where ``render`` writes the text through
the function it is given."""


def manifest_plain(manifest: Manifest) -> dict[str, Any]:
    return {
        "renderer": manifest.renderer,
        "tables": manifest.tables,
        "pages": manifest.pages,
        "summary": manifest.summary,
    }


def page_size(url: str) -> int | None:
    """The size of the page at ``url``, ``None`` when there is none."""
    fs, path = fsspec.core.url_to_fs(url)
    with storage_access(url, "read audit report"):
        try:
            fs.invalidate_cache(os.path.dirname(path))  # another machine may have written it
            return int(fs.size(path))
        except FileNotFoundError:
            return None


def _read_json(url: str) -> Any:
    """The JSON at ``url``; ``None`` when it is missing or not JSON (a cache, not a record).
    A refused access is raised, as for the tables."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with storage_access(url, "read audit report cache"):
            text = fs.cat_file(path)
        return json.loads(text)
    except StorageAccessError:
        raise
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _dump(data: Any, write: Callable[[str], Any]) -> None:
    write(json.dumps(data, separators=(",", ":")))
