"""Where the CPU of a Dagster deployment goes: by process, and inside a process by code.

Two instruments, both Linux-only (they read ``/proc`` and per-thread CPU clocks), used by
``benchmarks/scale_out.py``:

- :class:`ProcessTreeCpu` follows a process (the ``dagster-daemon``) and every process it
  ever starts (code servers, run workers, their compute-log helpers), reading each one's
  CPU time from ``/proc/<pid>/stat`` while it runs. The CPU of the children the daemon has
  reaped (``RUSAGE_CHILDREN``) misses whatever was orphaned or killed before being waited
  for: a run worker of a code server the daemon replaced, a killed code server.
- :class:`StackSampler` runs in a Python process (a run worker, a code server) and charges
  each thread's CPU time, read from the thread's own clock every few milliseconds, to the
  code on that thread's stack: the fal client, the pipeline's own work, Dagster, imports.
  Sampling charges a whole interval to the stack seen at its end: a split, not a trace.
  Started from the benchmark's code location when ``BRIA_BENCH_CPU_SPLIT`` names a
  folder: each process writes ``<pid>.json`` there (every second, and at exit).
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.util
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "BRIA_BENCH_CPU_SPLIT"
"""The folder a process's :class:`StackSampler` figures go to (unset: no sampling)."""

_TICK = os.sysconf("SC_CLK_TCK")

# -- processes -----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, start time in ticks, CPU seconds) of ``pid``; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def process_kind(cmdline: str, parent_kind: str | None) -> str:
    """What a descendant of the daemon is, from its command line and its parent's kind."""
    if "dagster api grpc" in cmdline or "dagster code-server" in cmdline:
        return "code server"
    if "watch_orphans.py" in cmdline or cmdline.startswith("tail "):
        return "compute logs"  # the local compute log manager's helpers, per step
    if "multiprocessing.spawn" in cmdline and parent_kind == "code server":
        return "run worker"  # the code server starts each run in a process of its own
    if "dagster api execute_run" in cmdline:
        return "run worker"
    return "other"


class ProcessTreeCpu:
    """CPU seconds of the ``roots`` (pid: kind) and of every process they ever start, by
    kind.

    Every ``interval`` s it looks for new descendants and reads each known process's CPU;
    a process's last interval before it exits is missed (a few ms per process).
    """

    def __init__(self, roots: dict[int, str], *, interval: float = 0.1) -> None:
        self.interval = interval
        self._kind: dict[tuple[int, int], str] = {}
        self._cpu: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()
        for pid, kind in roots.items():
            self.add_root(pid, kind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-tree-cpu", daemon=True)
        self._thread.start()

    def add_root(self, pid: int, kind: str) -> None:
        stat = _stat(pid)
        if stat is not None:
            with self._lock:
                self._kind[(pid, stat[1])] = kind

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                stats[int(entry.name)] = stat
        by_pid = {pid: key for key in self._kind for pid in [key[0]]}
        grew = True
        while grew:  # parents before children: a new child's parent is known by now
            grew = False
            for pid, (ppid, started, _) in stats.items():
                parent = by_pid.get(ppid)
                if (pid, started) in self._kind or parent is None:
                    continue
                if stats.get(ppid, (0, -1))[1] != parent[1]:
                    continue  # the parent pid was reused
                self._kind[(pid, started)] = process_kind(_cmdline(pid), self._kind[parent])
                by_pid[pid] = (pid, started)
                grew = True
        for key in self._kind:
            stat = stats.get(key[0])
            if stat is not None and stat[1] == key[1]:
                self._cpu[key] = max(self._cpu.get(key, 0.0), stat[2])

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling (after a last sample); each process seen: pid, kind, CPU seconds."""
        self._stop.set()
        self._thread.join()
        self.sample()
        return [
            {"pid": pid, "kind": kind, "cpu_s": self._cpu.get((pid, started), 0.0)}
            for (pid, started), kind in self._kind.items()
        ]


# -- threads, by the code on their stacks --------------------------------------------------

FAL_CLIENT = "fal client"
PIPELINE = "bria-dagster"
DAGSTER = "dagster"
POOL_WAIT = "dagster pool wait"
IMPORTS = "imports"
OTHER = "other"

CLIENT_THREADS = ("bria-session", "bria-journal")
"""The fal client's own threads (``BriaSession``'s event loop, the journal's writer)."""

_PACKAGE = f"{os.sep}bria_dagster{os.sep}"
_CLIENT = f"client{os.sep}"
_SHARED = ("fetch.py", "fetch_policy.py", "images.py", "fingerprint.py", f"contracts{os.sep}")
"""Modules of ``bria_dagster/client`` that the pipeline calls too (the catalog's fetches,
image decoding, request models): their CPU goes to the code that called them."""
_DAGSTER = (f"{os.sep}dagster{os.sep}", f"{os.sep}dagster_postgres{os.sep}")
_POOL_WAIT = frozenset({"get_next_step", "sleep_til_ready", "concurrency_event_iterator"})
"""What Dagster's in-process executor loop calls between steps: a step waiting for a pool
slot loops here."""


def classify(frame: Any, thread_name: str) -> str:
    """Who a thread's CPU belongs to: the innermost frame of this package or of Dagster
    decides (imports, and Dagster's executor loop waiting for a pool slot, apart): the fal
    client's code (``bria_dagster/client``), the pipeline's (the rest of the package), or
    Dagster's.

    A thread caught where no such frame is on its stack (waiting for work: a sampler that
    needs the GIL mostly finds threads where they release it) is charged by what the
    thread is for: the client's event loop and journal writer to the client, the loop's
    worker threads (which store each output) to the pipeline.
    """
    kind = None
    shared = False
    f = frame
    while f is not None:
        path = f.f_code.co_filename
        if "importlib._bootstrap" in path:
            return IMPORTS
        if kind is None and _PACKAGE in path:
            module = path.rsplit(_PACKAGE, 1)[1]
            if not module.startswith(_CLIENT):
                kind = PIPELINE
            elif any(part in module for part in _SHARED):
                shared = True  # the caller decides
            else:
                kind = FAL_CLIENT
        elif kind is None and not shared and any(part in path for part in _DAGSTER):
            kind = DAGSTER
        caller = f.f_back
        if (
            f.f_code.co_name in _POOL_WAIT
            and caller is not None
            and caller.f_code.co_name == "inner_plan_execution_iterator"
        ):
            return POOL_WAIT
        f = caller
    if kind is not None:
        return kind
    if thread_name.startswith(CLIENT_THREADS):
        return FAL_CLIENT
    if shared or thread_name.startswith("asyncio"):
        return PIPELINE
    return OTHER


def _short(code: Any) -> str:
    path = code.co_filename.rsplit(f"{os.sep}site-packages{os.sep}", 1)[-1]
    return f"{path.rsplit(_PACKAGE, 1)[-1]}:{code.co_name}"


def _where(frame: Any, thread_name: str) -> str:
    """A profile's key: the thread, the innermost frame, then the innermost frames of this
    package or Dagster, inside out."""
    names = []
    f = frame.f_back
    while f is not None and len(names) < 4:
        path = f.f_code.co_filename
        if _PACKAGE in path or any(part in path for part in _DAGSTER) or "importlib" in path:
            names.append(_short(f.f_code))
        f = f.f_back
    return f"[{thread_name.split('_')[0]}] {_short(frame.f_code)} < " + " < ".join(names)


class StackSampler:
    """Charges this process's threads' CPU to :func:`classify`'s kinds, every ``interval`` s.

    Its own CPU is measured on its own thread's clock and reported apart (``sampler_s``);
    ``process_s`` is the whole process's CPU, start-up before the sampler included.
    """

    def __init__(self, out_dir: str, *, interval: float = 0.02, detail: bool = False) -> None:
        self.path = Path(out_dir) / f"{os.getpid()}.json"
        self.interval = interval
        self.detail = detail
        self.by_kind: Counter[str] = Counter()
        self.by_place: Counter[str] = Counter()
        self._started = time.process_time()
        self._clocks: dict[int, tuple[int, float]] = {}  # thread: (CPU clock, CPU at last sample)
        for thread in threading.enumerate():  # their CPU so far is start-up, not sampled
            if thread.ident is not None:
                clock = time.pthread_getcpuclockid(thread.ident)
                self._clocks[thread.ident] = (clock, time.clock_gettime(clock))
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._lock = threading.Lock()
        self._thread.start()
        atexit.register(self.write, final=True)
        # A run worker is a multiprocessing child: its finalizers run as its run ends.
        multiprocessing.util.Finalize(None, self.write, kwargs={"final": True}, exitpriority=100)

    def _loop(self) -> None:
        last_write = time.monotonic()
        while True:
            time.sleep(self.interval)
            self.sample()
            if time.monotonic() - last_write > 1.0:
                self.write()
                last_write = time.monotonic()

    def sample(self) -> None:
        me = self._thread.ident
        frames = sys._current_frames()
        names = {t.ident: t.name for t in threading.enumerate()}
        with self._lock:
            for ident, frame in frames.items():
                if ident == me:
                    continue
                try:
                    clock = time.pthread_getcpuclockid(ident)
                    now = time.clock_gettime(clock)
                except (OSError, OverflowError):
                    continue  # the thread ended meanwhile
                previous = self._clocks.get(ident)
                self._clocks[ident] = (clock, now)
                spent = now - (previous[1] if previous else 0.0)
                if spent <= 0:
                    continue
                kind = classify(frame, names.get(ident, ""))
                self.by_kind[kind] += spent
                if self.detail:
                    self.by_place[f"{kind} | {_where(frame, names.get(ident, ''))}"] += spent

    def write(self, *, final: bool = False) -> None:
        if final:
            self.sample()  # the last interval too
        with self._lock:
            figures = {
                "pid": os.getpid(),
                "final": final,
                "argv": " ".join(sys.argv)[:200],
                "process_s": time.process_time(),
                "before_sampler_s": self._started,
                "sampler_s": time.clock_gettime(
                    time.pthread_getcpuclockid(self._thread.ident or threading.get_ident())
                ),
                "by_kind": dict(self.by_kind),
                "by_place": dict(self.by_place.most_common(200)),
            }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(figures))
        tmp.replace(self.path)


def start_from_env() -> StackSampler | None:
    """A :class:`StackSampler` when :data:`ENV` names a folder (``BRIA_BENCH_CPU_DETAIL=1``
    adds the top places), else None."""
    out_dir = os.environ.get(ENV)
    if not out_dir:
        return None
    return StackSampler(out_dir, detail=os.environ.get("BRIA_BENCH_CPU_DETAIL") == "1")


def read_splits(out_dir: Path) -> list[dict[str, Any]]:
    """Every process's last :class:`StackSampler` figures in ``out_dir``."""
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("[0-9]*.json"))]
