"""Scale out: many catalog batches at once through Dagster's run queue on a Postgres instance.

    .venv/bin/python benchmarks/scale_out.py [--batches 8] [--rows 250] [--latency 0.5]
        [--server-slots 32] [--runs-at-once 4] [--pool-limit 2] [--max-concurrency 16]
        [--own-code-server] [--workdir DIR]

What runs, all of it Dagster's own machinery (no hand-started run processes):

1. A real PostgreSQL (bria_dagster.testing.postgres) holds the instance: runs, event logs,
   schedules, pool slots, and the request journal (it defaults to the instance's database).
2. bria_dagster.testing.fal_server in its own process: ``--latency`` s per job,
   ``--server-slots`` jobs in progress per key (the excess waits IN_QUEUE, as on fal).
3. A code location (``definitions.py``) loaded by the daemon, which starts a code server
   for it and a new one every minute (``--own-code-server``: served by
   ``dagster code-server start`` instead; see ``WORKSPACE_GRPC_YAML``), its
   ``workspace.yaml`` and a ``dagster.yaml`` with
   Postgres storage, the ``QueuedRunCoordinator``, ``concurrency: runs: max_concurrent_runs``
   and op-granularity pools; the pool ``bria`` gets ``--pool-limit`` slots (what
   ``dagster instance concurrency set bria N`` does).
4. ``dagster job backfill --partitions ...`` submits one run per batch to the queue, then
   ``dagster-daemon run`` starts and launches them (DefaultRunLauncher: the code server
   starts each run in a process of its own), at most ``--runs-at-once`` at a time. (With
   the daemon already running, its first pass may take the queue while the CLI is still
   submitting and launch fewer.)
5. Once every run has ended, the figures come from the instance (run records, step events)
   and the fal server's counters.

Why pool limit 2 x max_concurrency 16 (bound 32) rather than 4 x 8: with 4 runs at once and
2 pool slots, two runs are always started, past their Python imports and catalog step, and
waiting for a slot; a finished image step hands its slot to a warm run instead of to a run
the daemon has yet to launch. The job runs in-process (one process per run, the run worker):
the multiprocess executor would start a fresh Python process per step *after* the step has
claimed its pool slot, so a slot would sit idle through every process start.

Printed: one line
``SCALE-OUT batches=.. rows=.. runs_at_once=.. wall_s=.. ratio=.. peak_in_flight=.. bound=..
duplicates=.. paid_twice=..`` (ratio = wall / ideal, ideal = rows x latency /
min(bound, server slots); wall runs from the daemon's first launch (RUN_STARTING) to the
last run's end, so run-process starts count and the daemon's own start does not; the
figures also give ``enqueued_to_end_s``); then
``DAGSTER-CPU per_row_ms=..``: the CPU of the Dagster side (the daemon, the code server
and every process either starts: run workers, Dagster's compute-log helpers) per row,
read from ``/proc`` while they run (``benchmarks/cpu_accounting.py``), beside the figure
before; by process kind; and the run workers' CPU by the code that spent it (the fal
client, bria-dagster's own work, Dagster, imports, start-up before the code location
loads), from a sampler in each process that loads the code location (its own CPU is
measured and left out); then the checks, PASS/FAIL with the true figures, and the load
average: on a shared 2-core machine other work stretches the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_accounting import (  # noqa: E402
    ENV,
    FAL_CLIENT,
    ProcessTreeCpu,
    read_splits,
)

PIPELINE = "product_images"
POOL = "bria"
STEP = f"{PIPELINE}_image_steps"
TABLE = f"{PIPELINE}__product_cutouts"

# The tested dagster.yaml (README, "Deploying"): the Postgres URL comes from the environment.
DAGSTER_YAML = """\
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_use_threads: true
    dequeue_num_workers: 4
concurrency:
  runs:
    max_concurrent_runs: {runs_at_once}
  pools:
    granularity: op
    op_granularity_run_buffer: {run_buffer}
telemetry:
  enabled: false
"""

WORKSPACE_YAML = """\
load_from:
  - python_file:
      relative_path: definitions.py
      location_name: bria_images
      working_directory: .
"""

# The code location served by a code server of its own: the daemon connects to it instead
# of starting one (and a new one every minute). Half the code servers' CPU, but the runs
# then start in step and claim the pool's last slot in the same instant, which Dagster's
# Postgres storage can admit twice (its claim is a SELECT ... FOR UPDATE and an UPDATE
# in separate autocommitted statements): 3 image steps at once in 2 of 3 runs.
WORKSPACE_GRPC_YAML = """\
load_from:
  - grpc_server:
      host: 127.0.0.1
      port: {port}
      location_name: bria_images
"""

DEFINITIONS_PY = '''\
"""The code location: one Bria pipeline whose fal step runs in the pool 'bria'."""

import os
from pathlib import Path

import dagster as dg

if os.environ.get("BRIA_BENCH_CPU_SPLIT"):  # the benchmark's CPU split of this process
    from benchmarks.cpu_accounting import start_from_env

    start_from_env()

from bria_dagster import BriaResource, PipelineSettings, build_definitions

HERE = Path(__file__).resolve().parent
bria = BriaResource(
    backend="fal",
    fal_key=dg.EnvVar("FAL_KEY"),
    max_concurrency={max_concurrency},  # requests in flight per run (per pool slot)
    file_roots=[str(HERE)],
    poll_interval_s=0.05,
)
# No audit report: the run queue, the pool and the fal steps are what is measured here.
settings = PipelineSettings(catalog_dir=str(HERE / "catalogs"), steps=("remove",), report=False)
defs = dg.Definitions.merge(
    build_definitions(settings, storage=str(HERE / "data"), bria=bria, operations=False),
    # One process per run (the run worker); its steps wait on fal, not on the CPU.
    dg.Definitions(executor=dg.in_process_executor),
)
'''


def write_project(
    workdir: Path,
    *,
    batches: int,
    rows: int,
    runs_at_once: int,
    pool_limit: int,
    max_concurrency: int,
    code_server_port: int | None = None,
) -> list[str]:
    """Catalogs, images, the code location, workspace.yaml (the code server at
    ``code_server_port``, or none: the daemon starts one) and DAGSTER_HOME/dagster.yaml."""
    from bria_dagster.engine.synthetic import CATEGORIES, make_product_photo

    cats = sorted(CATEGORIES)
    (workdir / "catalogs").mkdir(parents=True)
    (workdir / "images").mkdir()
    names = []
    for b in range(batches):
        batch = f"batch{b}"
        with (workdir / "catalogs" / f"{batch}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["sku", "image_url"])
            writer.writeheader()
            for i in range(rows):
                sku = f"{batch}-{i:05d}"
                photo = make_product_photo(cats[i % len(cats)], b * 1_000_000 + i, (64, 64))[0]
                (workdir / "images" / f"{sku}.jpg").write_bytes(photo)
                writer.writerow({"sku": sku, "image_url": f"../images/{sku}.jpg"})
        names.append(batch)
    (workdir / "definitions.py").write_text(DEFINITIONS_PY.format(max_concurrency=max_concurrency))
    (workdir / "workspace.yaml").write_text(
        WORKSPACE_YAML
        if code_server_port is None
        else WORKSPACE_GRPC_YAML.format(port=code_server_port)
    )
    home = workdir / "dagster_home"
    home.mkdir()
    run_buffer = max(0, runs_at_once - pool_limit)  # runs started while waiting for a slot
    (home / "dagster.yaml").write_text(
        DAGSTER_YAML.format(runs_at_once=runs_at_once, run_buffer=run_buffer)
    )
    return names


def _overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one instant (an end before a start at a tie)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, delta in points:
        now += delta
        best = max(best, now)
    return best


def _run_events(
    instance: Any, run_id: str
) -> tuple[list[tuple[float, float]], set[int], float | None]:
    """Of one run: the image step's (start, end), the pids Dagster's engine events name, and
    when the daemon launched it (RUN_STARTING)."""
    times: dict[str, float] = {}
    pids: set[int] = set()
    launched = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "RUN_STARTING":
            launched = entry.timestamp
        if entry.step_key == STEP and event.event_type_value in (
            "STEP_START",
            "STEP_SUCCESS",
            "STEP_FAILURE",
        ):
            times["start" if event.event_type_value == "STEP_START" else "end"] = entry.timestamp
        if event.is_engine_event and event.engine_event_data:
            value = (event.engine_event_data.metadata or {}).get("pid")
            if value is not None:
                pids.add(int(getattr(value, "value", value)))
    span = [(times["start"], times["end"])] if len(times) == 2 else []
    return span, pids, launched


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def _start(args: list[str], env: dict[str, str], cwd: Path, log: Any) -> subprocess.Popen[bytes]:
    """A long-running Dagster process in a session of its own (stopped with its children)."""
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_code_server(
    port: int, server: subprocess.Popen[bytes], workdir: Path, timeout_s: float = 300
) -> None:
    """Until the code server at ``port`` answers (it loads the code location first)."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping("ready")
            return
        except Exception:  # not serving yet
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the code server did not start:\n" + _tail(workdir / "daemon.log")
                ) from None
            time.sleep(0.5)


def run_scale_out(
    workdir: Path,
    *,
    pg_url: str,
    fal_env: dict[str, str],
    fal_stats: Any,
    batches: int,
    rows: int,
    latency: float,
    server_slots: int,
    runs_at_once: int = 4,
    pool_limit: int = 2,
    max_concurrency: int = 16,
    code_server: bool = False,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Everything but the fal and Postgres servers: project, code server (``code_server``;
    else the daemon starts its own), daemon, submission, wait, figures."""
    import dagster as dg
    import pandas as pd

    from bria_dagster.testing.ports import reserve_port

    port = reserve_port() if code_server else None
    partitions = write_project(
        workdir,
        batches=batches,
        rows=rows,
        runs_at_once=runs_at_once,
        pool_limit=pool_limit,
        max_concurrency=max_concurrency,
        code_server_port=port,
    )
    home = workdir / "dagster_home"
    splits = workdir / "cpu_split"
    splits.mkdir()
    env = {
        **os.environ,
        **fal_env,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": pg_url,
        "PYTHONPATH": str(ROOT),
        ENV: str(splits),
    }
    os.environ["DAGSTER_PG_URL"] = pg_url  # for this process' own instance (reads only)
    instance = dg.DagsterInstance.from_config(str(home))
    bin_dir = Path(sys.executable).parent
    started: list[subprocess.Popen[bytes]] = []
    tree = ProcessTreeCpu({})
    log = (workdir / "daemon.log").open("wb")
    try:
        instance.add_dynamic_partitions(f"{PIPELINE}_batches", partitions)
        instance.event_log_storage.set_concurrency_slots(POOL, pool_limit)
        if port is not None:
            server = _start(
                [
                    *(str(bin_dir / "dagster"), "code-server", "start", "-h", "127.0.0.1"),
                    *("-p", str(port), "-f", "definitions.py", "--location-name", "bria_images"),
                ],
                env,
                workdir,
                log,
            )
            started.append(server)
            tree.add_root(server.pid, "code server")
            _wait_for_code_server(port, server, workdir)
        # Every run is in the queue before the daemon takes it: its first pass launches
        # max_concurrent_runs of them at once.
        _cli(
            [
                *(str(bin_dir / "dagster"), "job", "backfill", "-w", "workspace.yaml"),
                *("-j", PIPELINE, "--partitions", ",".join(partitions), "--noprompt"),
            ],
            env,
            workdir,
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon = _start(
            [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, workdir, log
        )
        started.append(daemon)
        tree.add_root(daemon.pid, "daemon")
        deadline = time.monotonic() + timeout_s
        done_states = {
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        }
        while True:
            records = instance.get_run_records()
            if len(records) == batches and all(
                r.dagster_run.status in done_states for r in records
            ):
                break
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(
                    f"runs not done: {[r.dagster_run.status.value for r in records]}; daemon log:\n"
                    + _tail(workdir / "daemon.log")
                )
            time.sleep(0.5)

        run_spans, step_spans, launches, pids, ok_rows, failed_runs = [], [], [], {}, 0, []
        timeline: list[tuple[float | None, ...]] = []
        created = min(r.create_timestamp.timestamp() for r in records)
        for record in records:
            run = record.dagster_run
            if run.status != dg.DagsterRunStatus.SUCCESS:
                failed_runs.append(run.run_id)
            run_spans.append((record.start_time, record.end_time))
            span, pids[run.run_id], launched = _run_events(instance, run.run_id)
            step_spans += span
            timeline.append(
                (
                    launched if launched is not None else record.start_time,
                    record.start_time,
                    span[0][0] if span else None,
                    span[0][1] if span else None,
                    record.end_time,
                )
            )
            launches.append(launched if launched is not None else record.start_time)
            partition = run.tags.get("dagster/partition")
            table = workdir / "data" / "tables" / TABLE / f"{partition}.parquet"
            if table.exists():
                ok_rows += int((pd.read_parquet(table)["status"] == "ok").sum())
        end = max(r.end_time for r in records)
        wall, from_queue = end - min(launches), end - created
    finally:
        for process in reversed(started):  # the daemon (and the code server it started)
            _stop(process)
        log.close()
        instance.dispose()
        processes = tree.stop()
        # Each process's figure, beside the samplers' files (the printed ones add them up).
        (splits / "processes.json").write_text(json.dumps(processes))
    # CPU of the daemon, the code server and the run workers, of those reaped.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    stats = fal_stats()
    key = fal_env["FAL_KEY"]
    total = batches * rows
    bound = pool_limit * max_concurrency
    ideal = total * latency / (min(bound, server_slots) if server_slots > 0 else bound)
    distinct_pids = set().union(*pids.values()) if pids else set()
    first = min(launches)
    runs = [
        "launched {:.1f} started {:.1f} image step {}-{} ended {:.1f}".format(
            launched - first,
            started - first,
            "?" if step_start is None else f"{step_start - first:.1f}",
            "?" if step_end is None else f"{step_end - first:.1f}",
            ended - first,
        )
        for launched, started, step_start, step_end, ended in sorted(timeline)
    ]
    return {
        "timeline": runs,
        "batches": batches,
        "rows": total,
        "runs_at_once": _overlap(run_spans),
        "wall_s": round(wall, 2),
        "enqueued_to_end_s": round(from_queue, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 3),
        "peak_in_flight": stats["max_outstanding_by_key"].get(key, 0),
        "bound": bound,
        "duplicates": stats["duplicate_submissions"],
        "paid_twice": max(0, stats["billed_jobs"] - stats["distinct_requests"]),
        "submissions": stats["submissions"],
        "billed_jobs": stats["billed_jobs"],
        "ok_rows": ok_rows,
        "failed_runs": failed_runs,
        "pool_limit": pool_limit,
        "pool_peak": _overlap(step_spans),
        "image_steps": len(step_spans),
        "run_processes": len(distinct_pids),
        "pids_per_run": {k: sorted(v) for k, v in pids.items()},
        "max_concurrent_runs": runs_at_once,
        "dagster_cpu": dagster_cpu(processes, read_splits(splits), total, reaped_cpu),
    }


def dagster_cpu(
    processes: list[dict[str, Any]],
    splits: list[dict[str, Any]],
    rows: int,
    reaped_s: float,
) -> dict[str, Any]:
    """The Dagster side's CPU per row: the daemon and every process it started, by kind,
    and the run workers' CPU by the code it ran (the fal client's share apart).

    The samplers' own CPU (each measured on its thread's clock) is left out.
    """
    by_pid = {p["pid"]: p for p in processes}
    sampler = sum(s["sampler_s"] for s in splits if s["pid"] in by_pid)
    kinds: dict[str, float] = {}
    for process in processes:
        kinds[process["kind"]] = kinds.get(process["kind"], 0.0) + process["cpu_s"]
    by_code: dict[str, float] = {}
    for split in splits:
        process = by_pid.get(split["pid"])
        if process is None or process["kind"] != "run worker":
            continue
        kinds["run worker"] -= split["sampler_s"]
        # Before the code location loaded (and the sampler with it): interpreter, imports.
        codes = {**split["by_kind"], "start-up": split["before_sampler_s"]}
        for code, seconds in codes.items():
            by_code[code] = by_code.get(code, 0.0) + seconds
        # After the sampler's last look (Python's exit: its last garbage collection over
        # the whole heap, ~0.5 s) and in threads Python does not see (pyarrow's).
        unseen = process["cpu_s"] - split["sampler_s"] - sum(codes.values())
        by_code["exit and unsampled"] = by_code.get("exit and unsampled", 0.0) + unseen
    for split in splits:
        process = by_pid.get(split["pid"])
        if process is not None and process["kind"] != "run worker":
            kinds[process["kind"]] -= split["sampler_s"]
    total = sum(kinds.values())
    fal = by_code.get(FAL_CLIENT, 0.0)
    return {
        "per_row_ms": round(1000 * total / rows, 1),
        "total_s": round(total, 1),
        "by_process_kind_s": {k: round(v, 1) for k, v in sorted(kinds.items())},
        "processes": {k: sum(p["kind"] == k for p in processes) for k in sorted(kinds)},
        "run_workers_by_code_s": {k: round(v, 1) for k, v in sorted(by_code.items())},
        "fal_client_ms_per_row": round(1000 * fal / rows, 1),
        "rest_ms_per_row": round(1000 * (total - fal) / rows, 1),
        "sampler_s": round(sampler, 1),
        "reaped_s": round(reaped_s, 1),
    }


DAGSTER_CPU_BEFORE = {
    "ef2ef9d": "112 ms (the children the daemon reaped, issue 20)",
    "7156360": "79.9 ms (these figures, load average 13-15), 62.1 ms of it reaped",
}
"""The Dagster side's CPU per row at ``--latency 3`` before the changes that cut it (a run
waiting for a pool slot spun on a CPU core; the daemon replaced its code server every
minute)."""

MAX_DAGSTER_CPU_MS_PER_ROW = 40
MAX_RATIO = 1.2


def dagster_cpu_line(cpu: dict[str, Any]) -> str:
    kinds = " ".join(
        f"{kind.replace(' ', '_')}={seconds:.1f}s"
        for kind, seconds in cpu["by_process_kind_s"].items()
    )
    codes = ", ".join(f"{code} {s:.1f}s" for code, s in cpu["run_workers_by_code_s"].items())
    before = "; ".join(f"{commit}: {figure}" for commit, figure in DAGSTER_CPU_BEFORE.items())
    return (
        f"DAGSTER-CPU per_row_ms={cpu['per_row_ms']:.1f} (before: {before}) "
        f"total_s={cpu['total_s']:.1f} fal_client_ms_per_row={cpu['fal_client_ms_per_row']:.1f} "
        f"rest_ms_per_row={cpu['rest_ms_per_row']:.1f}\n"
        f"  by process: {kinds} (processes {cpu['processes']})\n"
        f"  run workers by code: {codes}\n"
        f"  left out: the samplers' own {cpu['sampler_s']:.1f}s; the children the daemon "
        f"reaped, a lower bound: {cpu['reaped_s']:.1f}s"
    )


def bytecode_compiled() -> bool:
    """Whether the Dagster the run workers import has its ``.pyc`` files (a process that
    may not write them compiles every module from source at each start)."""
    import importlib.util

    import dagster

    return Path(importlib.util.cache_from_source(dagster.__file__)).exists()


def scale_out_line(r: dict[str, Any]) -> str:
    return (
        f"SCALE-OUT batches={r['batches']} rows={r['rows']} runs_at_once={r['runs_at_once']} "
        f"wall_s={r['wall_s']:.1f} ratio={r['ratio']:.2f} peak_in_flight={r['peak_in_flight']} "
        f"bound={r['bound']} duplicates={r['duplicates']} paid_twice={r['paid_twice']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rows", type=int, default=250, help="products per batch")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--server-slots", type=int, default=32)
    parser.add_argument("--runs-at-once", type=int, default=4)
    parser.add_argument("--pool-limit", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument(
        "--own-code-server",
        action="store_true",
        help="serve the code location from a code server of its own instead of letting "
        "the daemon start one (and a new one every minute); see WORKSPACE_GRPC_YAML",
    )
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    from bria_dagster.testing import FalServerProcess, PostgresTestServer

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bria-scale-out-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = FalServerProcess(
        workdir, key="scale-out-key", latency=args.latency, max_in_progress=args.server_slots
    )
    try:
        with PostgresTestServer() as pg:
            result = run_scale_out(
                workdir / "project",
                pg_url=pg.create_database("scale_out"),
                fal_env=server.env,
                fal_stats=server.stats,
                batches=args.batches,
                rows=args.rows,
                latency=args.latency,
                server_slots=args.server_slots,
                runs_at_once=args.runs_at_once,
                pool_limit=args.pool_limit,
                max_concurrency=args.max_concurrency,
                code_server=args.own_code_server,
            )
        server_cpu = server.cpu_seconds()
    finally:
        server.stop()
    print(scale_out_line(result))
    print(dagster_cpu_line(result["dagster_cpu"]))
    if not bytecode_compiled():
        print(
            "NOTE: Dagster's bytecode is not compiled here (pip --no-compile and "
            "PYTHONDONTWRITEBYTECODE=1): every run worker and code server compiled it from "
            "source, which the CPU above includes; see README, Deploying"
        )
    checks = {
        "every row ok": result["ok_rows"] == result["rows"] and not result["failed_runs"],
        "runs at once == max_concurrent_runs": result["runs_at_once"] == args.runs_at_once,
        "one process per run": result["run_processes"] == args.batches,
        "pool never over its limit": result["pool_peak"] <= result["pool_limit"],
        "peak in flight <= bound": result["peak_in_flight"] <= result["bound"],
        "no duplicate submission": result["duplicates"] == 0,
        "submissions == rows": result["submissions"] == result["rows"],
        "none paid twice": result["paid_twice"] == 0,
        f"wall <= {MAX_RATIO}x ideal": result["ratio"] <= MAX_RATIO,
        f"Dagster side <= {MAX_DAGSTER_CPU_MS_PER_ROW} ms CPU per row": (
            result["dagster_cpu"]["per_row_ms"] <= MAX_DAGSTER_CPU_MS_PER_ROW
        ),
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    print("runs (s after the first launch):")
    for line in result["timeline"]:
        print("  " + line)
    skip = ("pids_per_run", "timeline", "dagster_cpu")
    figures = {k: v for k, v in result.items() if k not in skip}
    figures["fal_server_cpu_s"] = round(server_cpu, 1)
    print("figures " + json.dumps(figures))
    print("load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
