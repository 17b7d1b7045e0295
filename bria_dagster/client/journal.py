"""The request journal: accepted fal request ids, written durably before they are awaited.

A process that dies (SIGKILL, OOM, a lost node) after fal accepted a request
would otherwise pay for it again on the next run. The journal maps each
request fingerprint to fal's request id the moment fal accepts it; a new
process given the same journal re-attaches to that id instead of resubmitting.

Two stores, one interface (:func:`open_journal` picks by URL):

- :class:`RequestJournal`: SQLite in WAL mode with ``synchronous=FULL``: each accepted
  id is on disk (fsync'd) before the call that submitted it returns. Several processes
  of one machine may share one journal file.
- :class:`PostgresRequestJournal`: one table in a PostgreSQL database, for runs on
  several machines. Each write is its own committed transaction before the call returns;
  a lost connection (a Postgres restart, a failover) is re-opened with bounded retries
  and the write repeated (every write is idempotent), so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError

__all__ = ["JournalEntry", "PostgresRequestJournal", "RequestJournal", "open_journal"]

logger = logging.getLogger(__name__)

PENDING, DONE = "pending", "done"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    fingerprint: str
    endpoint_id: str
    request_id: str
    state: str
    submitted_at: float


class RequestJournal:
    """Durable fingerprint -> fal request id map. ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = ":memory:" if self.path is None else str(self.path)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._writer = _writer_thread()
        with self._lock:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS requests ("
                " fingerprint TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL,"
                " request_id TEXT NOT NULL, state TEXT NOT NULL, submitted_at REAL NOT NULL)"
            )

    def __repr__(self) -> str:
        return f"RequestJournal({str(self.path) if self.path else ':memory:'})"

    def _select(self, column: str, value: str) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, endpoint_id, request_id, state, submitted_at"
                f" FROM requests WHERE {column} = ?",
                (value,),
            ).fetchall()
        return [JournalEntry(*row) for row in rows]

    def get(self, fingerprint: str) -> JournalEntry | None:
        found = self._select("fingerprint", fingerprint)
        return found[0] if found else None

    def accepted(self, fingerprint: str, endpoint_id: str, request_id: str) -> None:
        """Record that fal accepted ``request_id`` for ``fingerprint`` (durable on return)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?)",
                (fingerprint, endpoint_id, request_id, PENDING, time.time()),
            )

    async def accepted_async(self, fingerprint: str, endpoint_id: str, request_id: str) -> None:
        """:meth:`accepted` from the event loop (durable when the await returns).

        It runs in the journal's own writer thread, never queued behind the work of the
        loop's shared worker threads (outputs being stored, inputs read): until it
        returns, a crash pays for the request again."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._writer, self.accepted, fingerprint, endpoint_id, request_id
        )

    def completed(self, fingerprint: str) -> None:
        """The result was fetched and verified; a re-run can still re-read it by id."""
        with self._lock:
            self._db.execute(
                "UPDATE requests SET state = ? WHERE fingerprint = ?", (DONE, fingerprint)
            )

    def forget(self, fingerprint: str) -> None:
        """Drop an entry whose request was cancelled, failed, or is unknown to fal."""
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE fingerprint = ?", (fingerprint,))

    def pending(self) -> list[JournalEntry]:
        return self._select("state", PENDING)

    def close(self) -> None:
        self._writer.shutdown()
        with self._lock:
            self._db.close()


def _writer_thread() -> ThreadPoolExecutor:
    """The one thread a journal's :meth:`~RequestJournal.accepted_async` writes run in."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bria-journal")


POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
TABLE = "bria_request_journal"


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def open_journal(url: str | None, *, setting: str = "journal_url") -> RequestJournal:
    """The journal at ``url``: ``postgresql://...`` (a Postgres table), ``sqlite:///path``
    or a plain path (a SQLite file), ``None`` (in memory). ``setting`` names the setting
    the URL came from, for the error raised when Postgres cannot be reached."""
    if url is None:
        return RequestJournal(None)
    if is_postgres_url(url):
        return PostgresRequestJournal(url, setting=setting)
    if url.startswith("sqlite:///"):
        return RequestJournal(url.removeprefix("sqlite:///"))
    if re.match(r"^[a-z][a-z0-9+.-]*://", url):
        raise ConfigurationError(
            f"{setting}: {redact_url(url)!r} is not a journal URL (postgresql://..., "
            "sqlite:///path, or a file path)"
        )
    return RequestJournal(url)


def redact_url(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def host_port(url: str) -> str:
    """``host:port`` of a Postgres URL (its defaults filled in), for error messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


class PostgresRequestJournal(RequestJournal):
    """The request journal as one table (``bria_request_journal``) in a PostgreSQL database.

    Same interface and guarantees as :class:`RequestJournal`: :meth:`accepted` returns
    only once the row is committed (autocommit; Postgres' ``synchronous_commit`` makes it
    durable). A connection lost between calls or during one is re-opened, with retries
    for up to ``reconnect_timeout_s``, and the statement repeated: every statement is an
    idempotent upsert, update or delete, so a repeat after an unacknowledged commit is
    harmless. Thread-safe (one connection behind a lock).

    Raises:
        ConfigurationError: Postgres cannot be reached when the journal is opened (naming
            ``setting`` and the server's host:port).
    """

    def __init__(
        self,
        url: str,
        *,
        setting: str = "journal_url",
        connect_timeout_s: int = 5,
        reconnect_timeout_s: float = 60.0,
    ) -> None:
        try:
            import psycopg2
        except ImportError as exc:  # pragma: no cover - the postgres extra is missing
            raise ConfigurationError(
                f"{setting} is a PostgreSQL URL but psycopg2 is not installed: "
                "pip install 'bria-dagster[postgres]'"
            ) from exc
        self._pg = psycopg2
        self.url = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        self.path = None
        self.setting = setting
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._lock = threading.Lock()
        self._writer = _writer_thread()
        self._conn: Any = None
        try:
            self._connect()
        except self._pg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ConfigurationError(
                f"the request journal's PostgreSQL server at {host_port(self.url)} cannot be "
                f"reached (setting: {setting} = {redact_url(self.url)!r}): {first_line}"
            ) from None
        self._execute(
            # An advisory lock serialises concurrent first runs creating the table. The
            # statements run as one transaction, so a transaction-level lock: released at
            # its commit, when the next run can see the table (a session lock, released
            # before the commit, let it create the table a second time and fail).
            "SELECT pg_advisory_xact_lock(7236115046);"
            f" CREATE TABLE IF NOT EXISTS {TABLE} ("
            " fingerprint TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL,"
            " request_id TEXT NOT NULL, state TEXT NOT NULL,"
            " submitted_at DOUBLE PRECISION NOT NULL);",
            (),
        )

    def __repr__(self) -> str:
        return f"PostgresRequestJournal({redact_url(self.url)})"

    def _connect(self) -> None:
        self._conn = self._pg.connect(
            self.url, connect_timeout=self.connect_timeout_s, application_name="bria-journal"
        )
        self._conn.autocommit = True

    def _execute(self, sql: str, params: tuple[Any, ...], *, fetch: bool = False) -> list[Any]:
        """Run one statement (committed on return), reconnecting through a lost connection."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.1
        with self._lock:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._connect()
                    with self._conn.cursor() as cursor:
                        cursor.execute(sql, params)
                        return cursor.fetchall() if fetch else []
                except (self._pg.OperationalError, self._pg.InterfaceError) as exc:
                    self._drop_connection()
                    if time.monotonic() + delay > deadline:
                        raise ConfigurationError(
                            f"the request journal's PostgreSQL server at "
                            f"{host_port(self.url)} stayed unreachable for "
                            f"{self.reconnect_timeout_s:.0f} s (setting: {self.setting}): "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                        ) from None
                    logger.warning(
                        "request journal: PostgreSQL connection lost (%s); reconnecting",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
        self._conn = None

    def get(self, fingerprint: str) -> JournalEntry | None:
        rows = self._execute(
            "SELECT fingerprint, endpoint_id, request_id, state, submitted_at"
            f" FROM {TABLE} WHERE fingerprint = %s",
            (fingerprint,),
            fetch=True,
        )
        return JournalEntry(*rows[0]) if rows else None

    def accepted(self, fingerprint: str, endpoint_id: str, request_id: str) -> None:
        self._execute(
            f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (fingerprint) DO"
            " UPDATE SET endpoint_id = EXCLUDED.endpoint_id, request_id = EXCLUDED.request_id,"
            " state = EXCLUDED.state, submitted_at = EXCLUDED.submitted_at",
            (fingerprint, endpoint_id, request_id, PENDING, time.time()),
        )

    def completed(self, fingerprint: str) -> None:
        self._execute(f"UPDATE {TABLE} SET state = %s WHERE fingerprint = %s", (DONE, fingerprint))

    def forget(self, fingerprint: str) -> None:
        self._execute(f"DELETE FROM {TABLE} WHERE fingerprint = %s", (fingerprint,))

    def pending(self) -> list[JournalEntry]:
        rows = self._execute(
            "SELECT fingerprint, endpoint_id, request_id, state, submitted_at"
            f" FROM {TABLE} WHERE state = %s",
            (PENDING,),
            fetch=True,
        )
        return [JournalEntry(*row) for row in rows]

    def close(self) -> None:
        self._writer.shutdown()
        with self._lock:
            self._drop_connection()
