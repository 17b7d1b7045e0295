"""Where one pipeline's outputs live: images by sha256, step tables, the request journal.

A :class:`PipelineStorage` is the one object that the IO manager, reuse, the retry
schedule and the lineage CLI all read, so they cannot disagree about where a
pipeline's records are.

Layout under ``base`` (a local folder or any fsspec URL)::

    images/sha256/ab/abcdef....png           content-addressed images
    tables/<asset key parts joined by __>/<partition>.parquet
    reuse/v1/<asset>/...                     reuse index (see bria_dagster.reuse)
    journal.sqlite                           request journal (local bases only)

The request journal is a SQLite file or a PostgreSQL table (``journal_url``); by default
it follows the Dagster instance: its own Postgres database when the instance storage is
Postgres (:func:`resolve_journal_url`), else the SQLite file above.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from .errors import AWS_VARIABLES, StorageAccessError
from .store import ImageStore

__all__ = ["PipelineStorage", "instance_postgres_url", "resolve_journal_url"]

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
        """The request journal's URL or file, when no Dagster instance says otherwise."""
        if self.journal_url or self.journal_path:
            return str(self.journal_url or self.journal_path)
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

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Inside an asset: a :class:`StorageAccessError` becomes one ``dg.Failure`` naming
        the storage and what to check (no retry: wrong credentials stay wrong)."""
        try:
            yield
        except StorageAccessError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={
                    "storage": self.base,
                    "url": exc.url,
                    "action": exc.action,
                    "error_class": type(exc).__name__,
                    "cause": exc.cause,
                    "check": ", ".join(AWS_VARIABLES),
                },
                allow_retries=False,
            ) from None

    def guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (an asset body, plain or generator) under :meth:`failures`."""
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
                with self.failures():
                    yield from fn(*args, **kwargs)

            return generator

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any) -> Any:
            with self.failures():
                return fn(*args, **kwargs)

        return plain


def instance_postgres_url(instance: dg.DagsterInstance | None) -> str | None:
    """The database URL of ``instance``'s run storage when it is dagster-postgres'."""
    if instance is None:
        return None
    try:
        from dagster_postgres import PostgresRunStorage
    except ImportError:
        return None
    run_storage = instance.run_storage
    return run_storage.postgres_url if isinstance(run_storage, PostgresRunStorage) else None


def resolve_journal_url(
    storage: PipelineStorage, instance: dg.DagsterInstance | None
) -> tuple[str, str]:
    """``(url, setting)``: where a run's request journal lives, and the setting that says so.

    ``journal_url`` (or ``journal_path``) when set; else the instance's own Postgres
    database when its storage is Postgres; else the local SQLite file of ``storage``.
    """
    if storage.journal_url or storage.journal_path:
        setting = "journal_url" if storage.journal_url else "journal_path"
        return storage.journal_file(), f"PipelineStorage.{setting}"
    url = instance_postgres_url(instance)
    if url is not None:
        return url, "the Dagster instance's postgres storage (dagster.yaml storage: postgres:)"
    return storage.journal_file(), "PipelineStorage.base"
