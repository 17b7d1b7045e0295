"""The request journal: accepted fal request ids, written durably before they are awaited.

A process that dies (SIGKILL, OOM, a lost node) after fal accepted a request
would otherwise pay for it again on the next run. The journal maps each
request fingerprint to fal's request id the moment fal accepts it; a new
process given the same journal re-attaches to that id instead of resubmitting.

SQLite in WAL mode with ``synchronous=FULL``: each accepted id is on disk
(fsync'd) before the call that submitted it returns. Several processes may share
one journal file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JournalEntry", "RequestJournal"]

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

    def get(self, fingerprint: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, endpoint_id, request_id, state, submitted_at"
                " FROM requests WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
        return None if row is None else JournalEntry(*row)

    def accepted(self, fingerprint: str, endpoint_id: str, request_id: str) -> None:
        """Record that fal accepted ``request_id`` for ``fingerprint`` (durable on return)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?)",
                (fingerprint, endpoint_id, request_id, PENDING, time.time()),
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
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, endpoint_id, request_id, state, submitted_at"
                " FROM requests WHERE state = ?",
                (PENDING,),
            ).fetchall()
        return [JournalEntry(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
