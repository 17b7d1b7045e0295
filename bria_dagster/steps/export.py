"""Channel export: a batch's compliant packshots as files a channel's upload tool takes.

Per batch and channel, into ``<export_to>/<batch>/<channel>/`` on any fsspec location:

- one file per packshot, named by ``filename_template`` (default ``{sku}_{channel}.{ext}``);
- ``manifest.csv``: ``sku, channel, file, sha256, width, height, bytes, source_sha256,
  run_id`` (``run_id``: the run that made the packshot), one row per file, by sku.

Incremental: a file whose manifest row already has the packshot's sha256 (and that is
still there) is not written again; a changed sku rewrites only its file; a file of a sku
that is no longer exported (gone from the batch, or now failing a rule) is removed; the
manifest is written only when its content changes. Re-exporting an unchanged batch
writes nothing.
"""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd

from ..records.schema import OK, REUSED
from ..records.store import ImageStore, extension_for, write_bytes

__all__ = ["MANIFEST_COLUMNS", "MANIFEST_NAME", "ChannelExport", "export_channel"]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "sku",
    "channel",
    "file",
    "sha256",
    "width",
    "height",
    "bytes",
    "source_sha256",
    "run_id",
)


@dataclass
class ChannelExport:
    """What one channel's export of one batch did."""

    channel: str
    folder: str
    manifest: str
    files: int = 0
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    manifest_written: bool = False

    def metadata(self) -> dict[str, Any]:
        return {
            f"{self.channel}.files": self.files,
            f"{self.channel}.written": len(self.written),
            f"{self.channel}.unchanged": self.unchanged,
            f"{self.channel}.removed": len(self.removed),
        }


def export_channel(
    packshots: pd.DataFrame,
    channel: str,
    *,
    batch: str,
    export_to: str,
    store: ImageStore,
    filename_template: str = "{sku}_{channel}.{ext}",
) -> ChannelExport:
    """Write ``channel``'s usable packshots of ``batch`` (rows ``ok`` or ``reused``) and its
    manifest under ``<export_to>/<batch>/<channel>/``, touching only what changed."""
    fs, root = fsspec.core.url_to_fs(export_to)
    folder = posixpath.join(root.rstrip("/"), batch, channel)
    prefix = export_to.split("://", 1)[0] + "://" if "://" in export_to else ""
    result = ChannelExport(
        channel=channel, folder=prefix + folder, manifest=prefix + f"{folder}/{MANIFEST_NAME}"
    )
    rows = packshots[
        (packshots["variant"] == channel) & packshots["status"].isin([OK, REUSED])
    ].sort_values("sku")

    old_text = _read_text(fs, f"{folder}/{MANIFEST_NAME}")
    old = {r["file"]: r for r in csv.DictReader(io.StringIO(old_text))} if old_text else {}
    present = _listing(fs, folder)

    entries: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for row in rows.to_dict("records"):
        ext = extension_for(row["content_type"])
        name = filename_template.format(
            sku=row["sku"], channel=channel, ext=ext, batch=batch, variant=row["variant"]
        )
        if "/" in name or name in ("", ".", "..", MANIFEST_NAME):
            raise ValueError(
                f"filename_template {filename_template!r} gives {name!r} for sku "
                f"{row['sku']!r}: a file name must not contain '/' or be {MANIFEST_NAME}"
            )
        if name in seen:
            raise ValueError(
                f"filename_template {filename_template!r} names skus {seen[name]!r} and "
                f"{row['sku']!r} the same file {name!r}; make the template unique per sku"
            )
        seen[name] = row["sku"]
        previous = old.get(name)
        if previous and previous["sha256"] == row["image_sha256"] and name in present:
            size = int(previous["bytes"])
            result.unchanged += 1
        else:
            data = store.get(row["image_sha256"])
            write_bytes(fs, f"{folder}/{name}", data)
            size = len(data)
            result.written.append(name)
        entries.append(
            {
                "sku": row["sku"],
                "channel": channel,
                "file": name,
                "sha256": row["image_sha256"],
                "width": int(row["width"]),
                "height": int(row["height"]),
                "bytes": size,
                "source_sha256": row["root_source_sha256"] or "",
                "run_id": row["run_id"],
            }
        )
    for name in sorted(set(old) - set(seen)):  # ours (in the manifest), no longer exported
        if name in present:
            fs.rm_file(f"{folder}/{name}")
        result.removed.append(name)
    result.files = len(entries)

    text = _manifest_text(entries)
    if text != old_text:
        write_bytes(fs, f"{folder}/{MANIFEST_NAME}", text.encode())
        result.manifest_written = True
    return result


def _manifest_text(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    return out.getvalue()


def _read_text(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    try:
        with fs.open(path, "rb") as fh:
            return fh.read().decode()
    except FileNotFoundError:
        return None


def _listing(fs: fsspec.AbstractFileSystem, folder: str) -> set[str]:
    """The file names in ``folder`` (one listing, not one request per file)."""
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return set()
