"""Shared fixtures. The fal protocol server's address goes into the environment HERE,
before anything imports fal_client, because fal-client reads FAL_RUN_HOST and
FAL_QUEUE_RUN_HOST at import time and httpx reads SSL_CERT_FILE per client."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from bria_dagster.testing import (
    FalTestServer,
    PostgresTestServer,
    S3Server,
    reserve_port,
    running_s3_server,
)

# tests.signal_guard: every test is failed that leaves a signal disposition changed.
# pytester: tests/test_signals.py runs the guard on a test of its own.
pytest_plugins = ["tests.signal_guard", "pytester"]

FAL_PORT = reserve_port()
_CA_DIR = tempfile.mkdtemp(prefix="bria-fal-ca-")
atexit.register(shutil.rmtree, _CA_DIR, ignore_errors=True)  # the test CA dies with the session
FAL_CA = os.path.join(_CA_DIR, "ca.pem")
os.environ.update(
    {
        "FAL_RUN_HOST": f"127.0.0.1:{FAL_PORT}",
        "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{FAL_PORT}",
        "SSL_CERT_FILE": FAL_CA,
        "NO_PROXY": "127.0.0.1,localhost",
    }
)
os.environ.pop("FAL_KEY", None)  # tests choose their backend explicitly
# The lineage index of an s3:// base lives in a local cache folder: never the user's own.
_CACHE_DIR = tempfile.mkdtemp(prefix="bria-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ["BRIA_DAGSTER_CACHE_DIR"] = _CACHE_DIR


def _undo_dagster_interrupt_handlers(before: dict[int, object]) -> None:
    """Undoes what Dagster's in-process execution leaves behind (dagster 1.13,
    ``dagster._utils.interrupts``): ``capture_interrupts`` / ``raise_interrupts_as``
    put SIGINT's handler back on exit, but then call ``setup_interrupt_handlers``,
    which maps SIGTERM to SIGINT's handler for good. After any ``materialize`` or
    ``execute_in_process`` in this process, SIGTERM raised KeyboardInterrupt in pytest
    and, when pytest was started with SIGINT ignored (a background job of a
    non-interactive shell), SIGTERM was ignored too: by pytest and by every server
    it started afterwards (SIG_IGN survives exec). ``raise_interrupts_as`` also leaves
    its own handler on SIGINT when SIGINT was ``SIG_DFL``.

    Only those two signatures are undone: SIGTERM now sharing SIGINT's handler, and
    a handler defined in ``dagster._utils.interrupts``; any other change is left for
    the signal guard (tests/signal_guard.py) to report."""
    sigint_now = signal.getsignal(signal.SIGINT)
    for signum, handler in before.items():
        now = signal.getsignal(signum)
        if now == handler:
            continue
        mapped = signum == signal.SIGTERM and now == sigint_now
        from_dagster = getattr(now, "__module__", None) == "dagster._utils.interrupts"
        if mapped or from_dagster:
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _interrupt_handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


# Right where Dagster runs: each test's call, and each fixture's setup whatever its
# scope (tests/test_report.py's module-scoped `runs` materializes, for one).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    before = _interrupt_handlers()
    try:
        return (yield)
    finally:
        _undo_dagster_interrupt_handlers(before)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    before = _interrupt_handlers()
    try:
        return (yield)
    finally:
        _undo_dagster_interrupt_handlers(before)


DEFAULT_KNOBS = dict(
    latency=0.0, max_in_progress=0, rate_429=0.0, rate_5xx=0.0, rate_drop=0.0,
    rate_missing_once=0.0, retry_after=0.05, seed=1234,
    rate_stream_cut=0.0, status_stream=True, cpu_per_request_ms=0.0,
    fault_ops="submit,status,stream,result,file",
)  # fmt: skip


@pytest.fixture(scope="session")
def fal_server_session() -> Iterator[FalTestServer]:
    with FalTestServer(FAL_PORT, ca_path=FAL_CA, **DEFAULT_KNOBS) as server:
        yield server


@pytest.fixture
def fal_server(fal_server_session: FalTestServer) -> Iterator[FalTestServer]:
    """The session's fal server with default knobs and fresh counters."""
    fal_server_session.configure(**DEFAULT_KNOBS)
    fal_server_session.reset_stats()
    yield fal_server_session
    fal_server_session.configure(**DEFAULT_KNOBS)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresTestServer]:
    """A real PostgreSQL server on 127.0.0.1 (the pgserver wheel's binaries), started once
    per session and stopped (its data deleted) at the end."""
    with PostgresTestServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server_session: S3Server, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the loopback S3 server; returns ``s3://<bucket>``."""
    import fsspec

    s3_server_session.fresh_filesystems()
    name = "bria-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    fs = fsspec.filesystem("s3")
    fs.mkdir(name.rstrip("-"))
    return f"s3://{name.rstrip('-')}"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium over DevTools (``tests.test_report.Chromium``), one per module:
    the audit report's page check and the Dagster UI test drive it."""
    from tests.test_report import Chromium

    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield browser
    finally:
        browser.stop()
