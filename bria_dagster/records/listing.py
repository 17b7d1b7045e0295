"""Which files under ``<base>/tables`` are step tables, and when each last changed.

A step table is ``tables/<asset name>/<partition>.parquet``; hidden or underscore names
(``.x.parquet.tmp``, ``_lineage.sqlite``) are temporaries and caches, never tables.
Imports neither pyarrow nor (for a local base) fsspec: the CLI's lineage index lists
the tables on every query to see whether it is current.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..errors import storage_access

__all__ = ["TABLES", "is_local", "is_table_name", "scan_tables", "tables_location"]

TABLES = "tables"
_STAMP_HEX = 15  # hex characters of a remote stamp (60 bits: a positive SQLite integer)


def is_local(location: str | os.PathLike[str]) -> bool:
    """True for a local folder (or ``file://`` URL); fsspec URLs such as ``s3://`` are not."""
    text = os.fspath(location)
    return "://" not in text or text.startswith("file://")


def tables_location(base: str | os.PathLike[str]) -> str:
    """``<base>/tables``: a local path for a local base, else the URL."""
    text = os.fspath(base)
    if is_local(text):
        return os.path.join(text.removeprefix("file://"), TABLES)
    return f"{text.rstrip('/')}/{TABLES}"


def is_table_name(name: str) -> bool:
    """A step table's file name (or asset folder's name): not hidden, not a cache."""
    return not name.startswith((".", "_"))


def scan_tables(tables: str) -> dict[str, tuple[int, int]]:
    """``{"<asset>/<partition>.parquet": (stamp, size)}`` of the step tables under
    ``tables`` (:func:`tables_location`); the stamp is the mtime in ns locally, a 60-bit
    key of ETag and last-modified time remotely: it changes when a table is rewritten."""
    if not is_local(tables):
        return _scan_remote(tables)
    found: dict[str, tuple[int, int]] = {}
    with storage_access(tables, "list record tables"):
        try:
            assets = list(os.scandir(tables))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for asset in assets:
            if not asset.is_dir() or not is_table_name(asset.name):
                continue
            for entry in os.scandir(asset.path):
                if not entry.name.endswith(".parquet") or not is_table_name(entry.name):
                    continue
                if not entry.is_file():
                    continue
                stat = entry.stat()
                found[f"{asset.name}/{entry.name}"] = (stat.st_mtime_ns, stat.st_size)
    return found


def _scan_remote(tables: str) -> dict[str, tuple[int, int]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(tables)
    root = root.rstrip("/")
    with storage_access(tables, "list record tables"):
        fs.invalidate_cache()  # other machines write here: never trust an old listing
        # exists() first: s3fs's find() answers {} where access is refused.
        entries = fs.find(root, maxdepth=2, detail=True) if fs.exists(root) else {}
    found: dict[str, tuple[int, int]] = {}
    for path, info in entries.items():
        relative = path.removeprefix(root).lstrip("/")
        parts = relative.split("/")
        if len(parts) != 2 or info.get("type") != "file":
            continue
        if not parts[1].endswith(".parquet") or not all(map(is_table_name, parts)):
            continue
        found[relative] = (_remote_stamp(info), int(info.get("size") or 0))
    return found


def _remote_stamp(info: dict[str, Any]) -> int:
    """What changes when an object is rewritten: its ETag and last-modified time (s3fs),
    or whatever of mtime / created / md5 the filesystem reports."""
    keys = ("ETag", "etag", "md5", "LastModified", "last_modified", "mtime", "updated", "created")
    text = "|".join(str(info.get(key)) for key in keys)
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:_STAMP_HEX], 16)
