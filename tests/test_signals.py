"""Signal dispositions: the guard (tests/signal_guard.py) that fails a test leaving one
changed, and what Dagster's in-process execution leaves behind (and its undoing)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from pathlib import Path

import dagster as dg
import pytest

from bria_dagster.cli.demo import interrupt_handlers_restored
from tests.signal_guard import changes_made_by

REPO = Path(__file__).resolve().parent.parent


def _sigterm_ignored_by_kernel() -> bool:
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask >> (signal.SIGTERM - 1) & 1)


@pytest.fixture
def sigterm_default():
    """SIGTERM at SIG_DFL for the test (pytest may have been started with it otherwise)."""
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, old)


def test_guard_names_a_changed_sigterm_handler_with_both_values(sigterm_default):
    changes = changes_made_by(lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    assert "SIGTERM handler: before SIG_DFL, after SIG_IGN" in changes
    assert any(line.startswith("SigIgn") and "now ignored: SIGTERM" in line for line in changes)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    assert not _sigterm_ignored_by_kernel()


def test_guard_names_a_python_handler_by_its_qualified_name():
    def on_usr1(signum, frame):
        pass

    changes = changes_made_by(lambda: signal.signal(signal.SIGUSR1, on_usr1))
    assert changes == [
        "SIGUSR1 handler: before SIG_DFL, after "
        "tests.test_signals.test_guard_names_a_python_handler_by_its_qualified_name"
        ".<locals>.on_usr1"
    ]


def test_guard_sees_a_signal_blocked_and_unblocks_it():
    changes = changes_made_by(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2}))
    assert len(changes) == 1 and changes[0].startswith("SigBlk"), changes
    assert "now blocked: SIGUSR2" in changes[0]
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_guard_sees_a_signal_ignored_at_the_c_level_which_getsignal_does_not(sigterm_default):
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal.restype = ctypes.c_void_p
    sig_ign = ctypes.c_void_p(1)  # SIG_IGN is (void (*)(int)) 1

    def ignore_behind_pythons_back():
        libc.signal(signal.SIGTERM, sig_ign)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # Python does not know

    changes = changes_made_by(ignore_behind_pythons_back)
    assert len(changes) == 1 and changes[0].startswith("SigIgn"), changes
    assert "now ignored: SIGTERM" in changes[0]
    assert not _sigterm_ignored_by_kernel()  # put back through signal.signal


def test_guard_fails_the_test_that_leaves_sigterm_changed_and_only_that_one(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(
        """
        import signal

        def test_before():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

        def test_ignores_sigterm():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

        def test_restores_what_it_changed():
            old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, old)

        def test_after():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        """
    )
    result = pytester.runpytest_subprocess("-p", "tests.signal_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_ignores_sigterm*",
            "*the test left signal dispositions changed*",
            "*SIGTERM handler: before SIG_DFL, after SIG_IGN*",
            "*SigIgn (/proc/self/status): before 0x*, after 0x*(now ignored: SIGTERM)*",
        ]
    )
    assert "teardown of test_restores_what_it_changed" not in result.stdout.str()


def test_guard_blames_a_module_fixture_on_the_first_test_using_it(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(
        """
        import signal
        import pytest

        @pytest.fixture(scope="module")
        def usr1_ignored():
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # and never put back

        def test_first():
            pass

        def test_second(usr1_ignored):
            pass

        def test_third(usr1_ignored):
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # put back by the guard
        """
    )
    result = pytester.runpytest_subprocess("-p", "tests.signal_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_second*",
            "*signal dispositions changed between the end of test_*.py::test_first and this*",
            "*SIGUSR1 handler: before SIG_DFL, after SIG_IGN*",
        ]
    )


@dg.asset
def _tiny() -> int:
    return 1


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored, as in a background job of a non-interactive shell (the case in
    which pytest was found with SIGTERM ignored too, SigIgn 0x81005006)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, old)


def test_dagster_in_process_run_leaves_sigterm_mapped_to_sigint(sigterm_default, sigint_ignored):
    """The root cause, as of dagster 1.13: after an in-process run SIGTERM carries SIGINT's
    handler (here SIG_IGN). tests/conftest.py's dagster_interrupt_handlers_restored puts
    it back after the other tests. Should Dagster stop doing this, this test says so, and the
    fixture and demo.interrupt_handlers_restored can go."""
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    try:
        assert dg.materialize([_tiny]).success
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert _sigterm_ignored_by_kernel()
    finally:  # by hand: the conftest fixture sees SIGINT back to normal by its teardown
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_interrupt_handlers_restored_undoes_it_for_the_demo(sigterm_default, sigint_ignored):
    with interrupt_handlers_restored():
        assert dg.materialize([_tiny]).success
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not _sigterm_ignored_by_kernel()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
