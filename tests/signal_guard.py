"""A pytest plugin that fails any test leaving a signal disposition changed.

A test that runs Dagster in-process, or code that installs its own handlers, can leave
the pytest process with a different disposition for a signal than it had (an earlier
session found SIGINT and SIGTERM ignored, ``SigIgn 0x81005006``): every test after it,
and every subprocess started after it (``SIG_IGN`` is inherited across exec), then
runs in a different process. The guard snapshots, before each test:

* the Python-level handler of every catchable signal (``signal.getsignal``);
* the kernel's ignored and blocked sets from ``/proc/self/status`` (``SigIgn``,
  ``SigBlk``): a library can ignore or block a signal at the C level, which
  ``signal.getsignal`` does not see.

After the test (its fixtures torn down) it compares; on a difference it puts back what
it can (the Python handlers, the blocked set) so the tests after it are not blamed, and
fails the test naming each signal and its before/after values. It also compares the
snapshot before each test with the one after the previous test (or, for the first, the
one taken when the plugin loads): a class-, module- or session-scoped fixture, or a
test module's import, that changes one fails the first test it runs for.

Used by tests/conftest.py (``pytest_plugins``) and, in a pytester run, by
tests/test_signals.py."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

# SIGKILL and SIGSTOP cannot be caught, ignored or blocked.
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
CATCHABLE = tuple(s for s in sorted(signal.valid_signals()) if s not in _UNCATCHABLE)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        if hasattr(signal, "SIGRTMIN") and signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"  # e.g. 32 and 33, which glibc keeps for itself


def _describe(handler: object) -> str:
    if handler is None:
        return "None (installed outside Python)"
    if isinstance(handler, signal.Handlers):
        return handler.name
    module = getattr(handler, "__module__", None)
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{name}" if module else name


def _proc_masks() -> dict[str, int]:
    """``SigIgn`` and ``SigBlk`` of this process (the main thread's, as the guard runs
    there): bit n-1 set means signal n is ignored / blocked. Empty where there is no
    /proc (the Python handlers are still compared)."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    masks = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("SigIgn", "SigBlk"):
            masks[key] = int(value.strip(), 16)
    return masks


def _mask_signals(mask: int) -> list[str]:
    return [signal_name(n) for n in range(1, mask.bit_length() + 1) if mask >> (n - 1) & 1]


@dataclass(frozen=True)
class Dispositions:
    handlers: dict[int, object] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)


def snapshot() -> Dispositions:
    handlers = {}
    for signum in CATCHABLE:
        try:
            handlers[signum] = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
    return Dispositions(handlers=handlers, masks=_proc_masks())


def differences(before: Dispositions, after: Dispositions) -> list[str]:
    """One line per change between two snapshots, naming the signal and both values;
    empty when nothing changed."""
    changes = []
    for signum, handler in before.handlers.items():
        now = after.handlers.get(signum, handler)
        if now != handler:
            changes.append(
                f"{signal_name(signum)} handler: before {_describe(handler)}, "
                f"after {_describe(now)}"
            )
    for key, label in (("SigIgn", "ignored"), ("SigBlk", "blocked")):
        if key not in before.masks or key not in after.masks:
            continue
        old, new = before.masks[key], after.masks[key]
        if old == new:
            continue
        added, removed = _mask_signals(new & ~old), _mask_signals(old & ~new)
        detail = "; ".join(
            part
            for part in (
                f"now {label}: {', '.join(added)}" if added else "",
                f"no longer {label}: {', '.join(removed)}" if removed else "",
            )
            if part
        )
        changes.append(
            f"{key} (/proc/self/status): before 0x{old:016x}, after 0x{new:016x} ({detail})"
        )
    return changes


def restore(before: Dispositions, after: Dispositions) -> None:
    """Put back the Python handlers and the blocked set of ``before``. A signal ignored at
    the C level behind Python's back is put back too when Python's own record of its
    handler is unchanged: ``signal.signal`` re-installs the disposition in the kernel."""
    ignored_now = after.masks.get("SigIgn", 0) & ~before.masks.get("SigIgn", 0)
    for signum, handler in before.handlers.items():
        changed = after.handlers.get(signum, handler) != handler
        if (changed or ignored_now >> (signum - 1) & 1) and handler is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler)  # type: ignore[arg-type]
    if "SigBlk" in before.masks and before.masks.get("SigBlk") != after.masks.get("SigBlk"):
        blocked = {n for n in range(1, 65) if before.masks["SigBlk"] >> (n - 1) & 1}
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked & signal.valid_signals())


# Where the previous test left things: (its node id, or None before the first test).
# Taken when this plugin is loaded, before collection imports the test modules.
_last: tuple[str | None, Dispositions] = (None, snapshot())


def _fail(message: str, changes: list[str]) -> None:
    pytest.fail(
        f"{message} (the guard put back what it could):\n  " + "\n  ".join(changes),
        pytrace=False,
    )


@pytest.fixture(autouse=True)
def signal_dispositions_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test (at teardown) that leaves a signal's disposition other than it
    found it. Autouse and function-scoped, so it is set up before, and torn down after,
    the test's other function-scoped fixtures: a fixture's own teardown that restores
    what it changed is not blamed.

    What changes outside that span (collection, the setup of a class-, module- or
    session-scoped fixture, which happens before this one's, or a teardown after the
    previous test) fails this test at setup, naming the previous test."""
    global _last
    previous, left = _last
    before = snapshot()
    changes = differences(left, before)
    if changes:
        restore(left, before)
        _last = (request.node.nodeid, snapshot())
        since = (
            f"the end of {previous}" if previous else "the session's start (collection included)"
        )
        _fail(
            f"signal dispositions changed between {since} and this test's function-scoped "
            "fixtures: by a class-, module- or session-scoped fixture's setup or teardown, "
            "or at collection",
            changes,
        )
    yield
    after = snapshot()
    changes = differences(before, after)
    if changes:
        restore(before, after)
    _last = (request.node.nodeid, snapshot())
    if changes:
        _fail("the test left signal dispositions changed", changes)


# For tests of the guard itself: the comparison as a function of a change.
def changes_made_by(action: Callable[[], object]) -> list[str]:
    before = snapshot()
    try:
        action()
        return differences(before, snapshot())
    finally:
        restore(before, snapshot())
