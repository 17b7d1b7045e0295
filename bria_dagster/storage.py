"""Where one pipeline's outputs live: images by sha256, step tables, the request journal.

A :class:`PipelineStorage` is the one object that the IO manager, reuse, the retry
schedule and the lineage CLI all read, so they cannot disagree about where a
pipeline's records are.

Layout under ``base`` (a local folder or any fsspec URL)::

    images/sha256/ab/abcdef....png           content-addressed images
    tables/<asset key parts joined by __>/<partition>.parquet
    journal.sqlite                           request journal (local bases only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dagster as dg
import fsspec

from .store import ImageStore

__all__ = ["PipelineStorage"]

UNPARTITIONED = "__all__"


@dataclass(frozen=True)
class PipelineStorage:
    """A pipeline's storage location.

    Args:
        base: folder or fsspec URL (``s3://bucket/bria``, ``memory://bria``).
        journal_path: SQLite request journal. Default: ``<base>/journal.sqlite`` for a
            local base; for a remote base ``./.bria_journal.sqlite`` (keep it on a
            persistent disk of the run workers).
    """

    base: str = "bria_data"
    journal_path: str | None = None

    @classmethod
    def of(cls, storage: str | os.PathLike[str] | PipelineStorage) -> PipelineStorage:
        """``storage`` as a :class:`PipelineStorage` (a path or URL is its base)."""
        return storage if isinstance(storage, PipelineStorage) else cls(os.fspath(storage))

    @property
    def is_local(self) -> bool:
        return "://" not in self.base or self.base.startswith("file://")

    @property
    def images_uri(self) -> str:
        return f"{self.base.rstrip('/')}/images"

    @property
    def tables_uri(self) -> str:
        return f"{self.base.rstrip('/')}/tables"

    def image_store(self) -> ImageStore:
        return ImageStore(self.images_uri)

    def journal_file(self) -> str:
        """The request journal's file."""
        if self.journal_path:
            return self.journal_path
        if self.is_local:
            return os.path.join(self.base.removeprefix("file://"), "journal.sqlite")
        return ".bria_journal.sqlite"

    def table_folder(self, asset_key: dg.AssetKey | str) -> str:
        """The folder of one asset's tables (a key's parts joined by ``__``)."""
        name = asset_key if isinstance(asset_key, str) else "__".join(asset_key.path)
        return f"{self.tables_uri}/{name}"

    def table_path(self, asset_key: dg.AssetKey | str, partition: str | None) -> str:
        """Where the records of one asset partition live."""
        return f"{self.table_folder(asset_key)}/{partition or UNPARTITIONED}.parquet"

    def asset_tables(self, asset_key: dg.AssetKey | str, partition: str) -> list[str]:
        """Every table of ``asset_key``, the ``partition``'s own first (reuse looks there first)."""
        own = self.table_path(asset_key, partition)
        fs, root = fsspec.core.url_to_fs(self.table_folder(asset_key))
        protocol = "" if "://" not in self.base else self.base.split("://", 1)[0] + "://"
        others = fs.glob(f"{root}/*.parquet") if fs.exists(root) else []
        return [own, *sorted(protocol + p for p in others if not own.endswith(p))]
