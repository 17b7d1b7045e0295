"""Where one pipeline's outputs live: images by sha256, step tables, the request journal.

A :class:`PipelineStorage` is the one object that the IO manager, reuse, the retry
schedule and the lineage CLI all read, so they cannot disagree about where a
pipeline's records are.

Layout under ``base`` (a local folder or any fsspec URL)::

    images/sha256/ab/abcdef....png           content-addressed images
    tables/<asset key parts joined by __>/<partition>.parquet
    reuse/v1/<asset>/...                     reuse index (see bria_dagster.records.reuse)
    journal.sqlite                           request journal (local bases only)

The request journal is a SQLite file or a PostgreSQL table (``journal_url``); by default
it follows the Dagster instance: its own Postgres database when the instance storage is
Postgres (``orchestration.storage_access.resolve_journal_url``), else the SQLite file above.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .listing import TABLES, is_local
from .store import ImageStore

__all__ = ["UNPARTITIONED", "AssetName", "PipelineStorage", "asset_name"]


class _KeyLike(Protocol):
    """An asset key (``dagster.AssetKey``) seen without importing Dagster: its ``path``."""

    @property
    def path(self) -> Sequence[str]: ...


AssetName = str | _KeyLike
"""An asset's table name (``product_images__product_cutouts``) or its Dagster key."""


def asset_name(asset_key: AssetName) -> str:
    """The table folder name of ``asset_key``: a key's parts joined by ``__``."""
    return asset_key if isinstance(asset_key, str) else "__".join(asset_key.path)


UNPARTITIONED = "__all__"


@dataclass(frozen=True)
class PipelineStorage:
    """A pipeline's storage location.

    Args:
        base: folder or fsspec URL (``s3://bucket/bria``, ``memory://bria``).
        journal_url: the request journal: ``postgresql://user:pw@host:5432/db`` (a table
            in that database, for runs on several machines), ``sqlite:///path`` or a plain
            path (a SQLite file). Default: the Dagster instance's own Postgres database
            when the instance storage is Postgres; otherwise ``<base>/journal.sqlite`` for
            a local base, ``./.bria_journal.sqlite`` for a remote one.
        journal_path: older name of a SQLite ``journal_url`` (a file path).
    """

    base: str = "bria_data"
    journal_url: str | None = None
    journal_path: str | None = None

    def __post_init__(self) -> None:
        if self.journal_url and self.journal_path:
            raise ValueError("PipelineStorage: give journal_url or journal_path, not both")

    @classmethod
    def of(cls, storage: str | os.PathLike[str] | PipelineStorage) -> PipelineStorage:
        """``storage`` as a :class:`PipelineStorage` (a path or URL is its base)."""
        return storage if isinstance(storage, PipelineStorage) else cls(os.fspath(storage))

    @property
    def is_local(self) -> bool:
        return is_local(self.base)

    @property
    def images_uri(self) -> str:
        return f"{self.base.rstrip('/')}/images"

    @property
    def tables_uri(self) -> str:
        return f"{self.base.rstrip('/')}/{TABLES}"

    def image_store(self) -> ImageStore:
        return ImageStore(self.images_uri)

    def journal_file(self) -> str:
        """The request journal's URL or file, when no Dagster instance says otherwise."""
        if self.journal_url or self.journal_path:
            return str(self.journal_url or self.journal_path)
        if self.is_local:
            return os.path.join(self.base.removeprefix("file://"), "journal.sqlite")
        return ".bria_journal.sqlite"

    def table_folder(self, asset_key: AssetName) -> str:
        """The folder of one asset's tables (a key's parts joined by ``__``)."""
        return f"{self.tables_uri}/{asset_name(asset_key)}"

    def table_path(self, asset_key: AssetName, partition: str | None) -> str:
        """Where the records of one asset partition live."""
        return f"{self.table_folder(asset_key)}/{partition or UNPARTITIONED}.parquet"
