"""The request journal in a real PostgreSQL (bria_dagster.testing.postgres; no mock): its interface,
a Postgres restart mid-run, Postgres unreachable at start, and a SIGKILLed Dagster run on a
Postgres instance re-attached from another process and working directory."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from bria_dagster import BriaResource, PipelineStorage
from bria_dagster.client.journal import PostgresRequestJournal, open_journal
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import ConfigurationError
from bria_dagster.orchestration.storage_access import resolve_journal_url
from bria_dagster.testing import reserve_port

REPO = Path(__file__).resolve().parents[1]
_db_names = itertools.count()


@pytest.fixture
def database(postgres_server) -> str:
    """A fresh database on the session's server; its URL."""
    return postgres_server.create_database(f"journal_{os.getpid()}_{next(_db_names)}")


def test_postgres_journal_has_the_sqlite_journals_interface(database):
    journal = open_journal(database)
    assert isinstance(journal, PostgresRequestJournal)
    journal.accepted("fp1", "fal-ai/bria/background/remove", "req-1")
    journal.accepted("fp2", "fal-ai/bria/expand", "req-2")
    journal.accepted("fp1", "fal-ai/bria/background/remove", "req-1b")  # upsert
    assert journal.get("fp1").request_id == "req-1b"
    journal.completed("fp1")
    assert [e.fingerprint for e in journal.pending()] == ["fp2"]
    journal.forget("fp2")
    assert journal.get("fp2") is None and journal.get("nope") is None
    journal.close()
    # Another connection (another machine) sees what the first wrote.
    other = open_journal(database)
    assert other.get("fp1").state == "done"
    other.close()


def _open_at_once(url: str, count: int) -> tuple[list[PostgresRequestJournal], list[Exception]]:
    """``count`` journals at ``url`` opened by as many threads at the same instant."""
    start = threading.Barrier(count)
    opened, errors = [], []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(open_journal(url))
        except Exception as exc:  # what a run's step would fail with
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    return opened, errors


def test_runs_opening_a_new_databases_journal_at_once_all_open_it(postgres_server):
    # The first runs of a deployment start together: each creates the journal's table if
    # it is missing, and none may fail because another one just created it.
    for attempt in range(3):
        database = postgres_server.create_database(f"journal_race_{os.getpid()}_{attempt}")
        opened, errors = _open_at_once(database, 6)
        for journal in opened:
            journal.close()
        assert not errors, errors
        assert len(opened) == 6  # none left waiting for a lock a failed one kept


def test_postgres_restarted_mid_run_loses_no_rows(postgres_server, database):
    journal = PostgresRequestJournal(database)
    writers, per_writer = 4, 40
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(per_writer):
                journal.accepted(f"fp-{w}-{i}", "fal-ai/bria/background/remove", f"req-{w}-{i}")
                time.sleep(0.005)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    postgres_server.restart(mode="immediate")  # a crash: no shutdown checkpoint
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    journal.close()
    rows = open_journal(database).pending()
    assert len(rows) == writers * per_writer
    assert {r.request_id for r in rows} == {
        f"req-{w}-{i}" for w in range(writers) for i in range(per_writer)
    }


def test_postgres_unreachable_at_start_is_a_clear_error():
    port = reserve_port()  # nothing listens there
    url = f"postgresql://bria:secret@127.0.0.1:{port}/bria"
    with pytest.raises(ConfigurationError) as raised:
        open_journal(url, setting="PipelineStorage.journal_url")
    message = str(raised.value)
    assert "PipelineStorage.journal_url" in message and f"127.0.0.1:{port}" in message
    assert "secret" not in message and len(message.splitlines()) == 1
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    # In Dagster: a Failure with metadata, raised before any request could be sent.
    bria = BriaResource(backend="local")
    try:
        with pytest.raises(dg.Failure) as failure:
            bria.open_journal(url, setting="PipelineStorage.journal_url")
        assert f"127.0.0.1:{port}" in failure.value.description
        assert failure.value.metadata["journal_setting"].value == "PipelineStorage.journal_url"
    finally:
        bria.close()


def test_journal_url_default_follows_the_dagster_instance(postgres_server, database, tmp_path):
    local = PipelineStorage(str(tmp_path / "data"))
    with dg.instance_for_test() as sqlite_instance:
        assert resolve_journal_url(local, sqlite_instance)[0] == str(
            tmp_path / "data" / "journal.sqlite"
        )
    with dg.instance_for_test(
        overrides={"storage": {"postgres": {"postgres_url": database}}}
    ) as pg:
        url, setting = resolve_journal_url(local, pg)
        assert url == database and "postgres" in setting
        explicit = PipelineStorage(str(tmp_path / "data"), journal_url="sqlite:///j.sqlite")
        assert resolve_journal_url(explicit, pg) == (
            "sqlite:///j.sqlite",
            "PipelineStorage.journal_url",
        )


# ------------------------------------------------------------------ SIGKILL, two machines


def _catalog(root: Path, rows: int) -> Path:
    (root / "catalogs").mkdir(parents=True)
    (root / "images").mkdir()
    with (root / "catalogs" / "pgkill.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "image_url"])
        writer.writeheader()
        for i in range(rows):
            path = root / "images" / f"sku{i:03d}.jpg"
            path.write_bytes(make_product_photo("white_studio", 7000 + i, (64, 64))[0])
            writer.writerow({"sku": f"sku{i:03d}", "image_url": str(path)})
    return root / "catalogs"


def _machine(root: Path, database: str) -> tuple[Path, Path]:
    """A working directory and an instance folder of one 'machine' (nothing shared locally)."""
    cwd, home = root / "cwd", root / "dagster_home"
    cwd.mkdir(parents=True)
    home.mkdir()
    (home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {database}\n")
    return cwd, home


def _journal_rows(database: str) -> dict[str, str]:
    import psycopg2

    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT to_regclass('bria_request_journal')")
            if cursor.fetchone()[0] is None:
                return {}
            cursor.execute("SELECT fingerprint, request_id FROM bria_request_journal")
            return dict(cursor.fetchall())
    finally:
        conn.close()


def _start(cwd: Path, home: Path, catalog: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "pg_run_worker.py"), str(catalog), "pgkill"],
        cwd=cwd,
        env={**os.environ, **env, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkilled_run_is_reattached_from_another_machine_through_postgres(
    postgres_server, fal_server, tmp_path
):
    rows = 12
    database = postgres_server.create_database("sigkill")
    catalog = _catalog(tmp_path / "inputs", rows)
    fal_server.configure(latency=1.5)  # jobs stay in flight long enough to kill the run
    env = fal_server.env()

    cwd_a, home_a = _machine(tmp_path / "machine_a", database)
    victim = _start(cwd_a, home_a, catalog, env)
    journaled: dict[str, str] = {}
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            if len(_journal_rows(database)) >= 3:
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(0.3)  # let a submit round trip in progress reach the server
                journaled = _journal_rows(database)
                # Kill outside a submit round trip (README: the one window fal's missing
                # idempotency key leaves open): every accepted submission is journaled.
                if fal_server.stats()["submissions"] == len(journaled):
                    os.kill(victim.pid, signal.SIGKILL)
                    break
                os.kill(victim.pid, signal.SIGCONT)
            time.sleep(0.05)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    output = victim.stdout.read() if victim.stdout else ""
    assert victim.returncode == -signal.SIGKILL, output[-3000:]
    assert 0 < len(journaled) < rows
    assert not (cwd_a / "bria_data" / "journal.sqlite").exists()  # the journal is in Postgres

    # The retry: another process, another working directory, no local state.
    cwd_b, home_b = _machine(tmp_path / "machine_b", database)
    retry = _start(cwd_b, home_b, catalog, env)
    out, _ = retry.communicate(timeout=120)
    assert retry.returncode == 0, out[-3000:]
    result = json.loads(out.rsplit("RESULT ", 1)[1])
    assert result["success"] and result["calls"] == rows - len(journaled)

    table = pd.read_parquet(
        cwd_b / "bria_data" / "tables" / "product_images__product_cutouts" / "pgkill.parquet"
    )
    assert (table["status"] == "ok").all() and len(table) == rows
    # Every request the killed run had accepted was re-attached (same fal request id) ...
    assert set(journaled.values()) <= set(table["request_id"])
    # ... and none was paid twice (the fal server's billing counters).
    stats = fal_server.stats()
    assert stats["duplicate_submissions"] == 0
    assert stats["submissions"] == rows
