"""Storage seen from inside Dagster: access failures as ``dg.Failure``, the run's journal.

:class:`~bria_dagster.records.storage.PipelineStorage` is Dagster-free; this is what an
asset adds to it: a refused storage (wrong S3 credentials) ends the step with one
``dg.Failure`` that names the storage and what to check, and the request journal follows
the Dagster instance (its own Postgres database when the instance storage is Postgres).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from ..errors import AWS_VARIABLES, StorageAccessError
from ..records.storage import PipelineStorage

__all__ = ["guarded", "instance_postgres_url", "resolve_journal_url", "storage_failures"]


@contextlib.contextmanager
def storage_failures(storage: PipelineStorage) -> Iterator[None]:
    """Inside an asset: a :class:`StorageAccessError` becomes one ``dg.Failure`` naming
    the storage and what to check (no retry: wrong credentials stay wrong)."""
    try:
        yield
    except StorageAccessError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={
                "storage": storage.base,
                "url": exc.url,
                "action": exc.action,
                "error_class": type(exc).__name__,
                "cause": exc.cause,
                "check": ", ".join(AWS_VARIABLES),
            },
            allow_retries=False,
        ) from None


def guarded(storage: PipelineStorage) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: an asset body (plain or generator) under :func:`storage_failures`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
                with storage_failures(storage):
                    yield from fn(*args, **kwargs)

            return generator

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any) -> Any:
            with storage_failures(storage):
                return fn(*args, **kwargs)

        return plain

    return wrap


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
