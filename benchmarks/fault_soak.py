"""Fault soak: concurrent Dagster runs on a faulty fal server, one of them SIGKILLed mid-batch.

    .venv/bin/python benchmarks/fault_soak.py [--batches 4] [--rows 500] [--latency 0.3]
        [--max-concurrency 16] [--pool-limit 1] [--kill-after 40] [--no-kill] [--no-faults]
        [--stagger] [--workdir DIR]
    .venv/bin/python benchmarks/fault_soak.py --kill-sweep [--kill-at 36 40 45 50 55 0]

What runs (steps=("remove",): catalog_batch -> product_cutouts, one fal call per row):

1. bria_dagster.testing.fal_server in standalone mode, its own process, with faults:
   10% 429, 5% 5xx, 2% dropped connections, 1% result files that 404 once; 32 jobs per key
   at once.
2. ``--batches`` catalog batches of ``--rows`` rows (64x64 synthetic product photos, distinct
   seeds), each materialized by its own subprocess (``job.execute_in_process(partition_key=...,
   instance=DagsterInstance.get())``), all started at once on one shared DAGSTER_HOME whose
   dagster.yaml sets op-granularity pools; the pool "bria" has ``--pool-limit`` slots. All runs
   use one FAL_KEY; each partition has its own request journal (sqlite WAL).
3. The kill: once the victim partition has ``--kill-after`` journaled requests, the victim is
   SIGSTOPped, the server is given a moment to settle, and the victim is SIGKILLed only when
   the server's accepted submissions equal the journaled rows of all partitions (no submit
   round trip in flight; otherwise SIGCONT and try again). A kill *during* a submit round trip
   is the one window the journal cannot cover without an idempotency key on fal's side
   (README, "Going to production"); this soak times the kill outside it on purpose.
   A SIGKILLed ``execute_in_process`` run keeps its pool slot and stays STARTED: the soak
   waits until the server has no job in flight (the victim's accepted jobs still run on fal),
   then frees the slot and marks the run failed, as an operator would, and re-runs the
   partition with the same journal.

All runs start at once by default. On Dagster's SQLite instance storage two pooled steps that
ask at the same moment can both be admitted (SQLITE_POOL_RACE below; the overlap check then
FAILs with the true figures); ``--stagger`` starts the other runs once the first holds the slot.

``--kill-sweep`` measures that window instead: one run of 96 rows (32 in flight, 2 s per job,
256 px photos sent inline, no faults) per kill point, SIGKILLed the moment fal has accepted
``--kill-at`` submissions (no quiet moment chosen; 0: once the first burst is journaled,
between bursts), then re-run on the same journal. Each point prints ``KILL-AT`` with fal's
accepted submissions, the journaled ones and the re-run's paid_twice, PASS when paid_twice
is at most BriaResource.max_unjournaled_submits (4; 0 between bursts) and every row is ok.

Figures printed, each check PASS/FAIL with the true numbers: every row of every partition
table ok; 0 duplicate paid submissions; accepted submissions == rows; peak in-flight requests
for the key <= pool limit x max_concurrency; faults injected by kind; client retries; wall
time; and for the kill: every request journaled by the victim re-attached (the re-run's
records carry the journaled request ids) and only the rest paid again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SQLITE_POOL_RACE = """\
Dagster 1.13 SQLite instance storage does not make a pool claim atomic across processes:
dagster/_core/storage/event_log/sql_event_log.py claim_concurrency_slot() reads
has_unassigned_slots() and then writes add_pending_step(should_assign=...) in separate
statements, and _claim_concurrency_slot() selects a free slot `.with_for_update(skip_locked=True)`
(a no-op on SQLite) and updates it by id alone (no `step_key IS NULL` guard). Two runs whose
pooled steps ask at the same moment can both be admitted. Postgres/MySQL storage locks the
row; with SQLite, --stagger starts the other runs once the first one holds the slot."""
POOL = "bria"
STEP = "product_images_image_steps"  # the node (step) that materializes the cutouts
TABLE = "product_images__product_cutouts"  # the cutouts' table folder
RESULT_PREFIX = "SOAK_RESULT "
FAULT_RATES = {"rate_429": 0.1, "rate_5xx": 0.05, "rate_drop": 0.02, "rate_missing_once": 0.01}
KILL_POINTS = (36, 40, 45, 50, 55, 0)  # --kill-sweep: accepted submissions; 0 between bursts


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    batches: int = 4
    rows: int = 500
    latency: float = 0.3
    max_concurrency: int = 16
    pool_limit: int = 1
    server_slots: int = 32
    kill: bool = True
    kill_partition: int = 1  # index of the victim batch
    kill_after: int = 40  # journaled requests of the victim before it is killed
    stagger: bool = False  # start the other runs once the first one's fal step holds the pool
    poll_interval_s: float = 0.05
    retry_base_delay_s: float = 0.05
    timeout_s: float = 900.0
    seed: int = 11
    faults: dict[str, float] = dataclasses.field(default_factory=lambda: dict(FAULT_RATES))
    image_px: int = 64  # side of the synthetic product photos
    on_terminate: str = "cancel_queued"  # BriaResource.on_terminate of the workers
    termination_grace_s: float = 20.0  # BriaResource.termination_grace_s of the workers
    max_unjournaled_submits: int = 4  # BriaResource.max_unjournaled_submits of the workers


# ----------------------------------------------------------------------------- worker side


def worker(catalog_dir: str, storage: str, partition: str, journal: str, config: str) -> int:
    """One Dagster run of one partition (in its own process); prints one SOAK_RESULT line."""
    import dagster as dg

    from bria_dagster import BriaResource, PipelineSettings, PipelineStorage, build_definitions

    knobs = json.loads(config)
    settings = PipelineSettings(catalog_dir=catalog_dir, steps=("remove",))
    bria = BriaResource(
        backend="fal",
        fal_key=dg.EnvVar("FAL_KEY"),
        file_roots=[str(Path(catalog_dir).parent)],
        max_concurrency=knobs["max_concurrency"],
        poll_interval_s=knobs["poll_interval_s"],
        retry_base_delay_s=knobs["retry_base_delay_s"],
        on_terminate=knobs.get("on_terminate", "cancel_queued"),
        termination_grace_s=knobs.get("termination_grace_s", 20.0),
        max_unjournaled_submits=knobs.get("max_unjournaled_submits", 4),
    )
    storage = PipelineStorage(storage, journal_path=journal)
    defs = build_definitions(settings, storage=storage, bria=bria, operations=False)
    job = defs.resolve_job_def("product_images")
    instance = dg.DagsterInstance.get()
    started = time.monotonic()
    try:
        result = job.execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False
        )
        metadata: dict[str, Any] = {}
        for mat in result.asset_materializations_for_node(STEP):
            metadata.update({k: getattr(v, "value", v) for k, v in mat.metadata.items()})
        summary = {
            "partition": partition,
            "run_id": result.run_id,
            "success": result.success,
            "wall_s": round(time.monotonic() - started, 3),
            "retries": metadata.get("bria.retries"),
            "calls": metadata.get("bria.remove.calls"),
        }
    finally:
        instance.dispose()
    print(RESULT_PREFIX + json.dumps(summary), flush=True)
    return 0 if summary["success"] else 1


# ----------------------------------------------------------------------------- parent side


def write_batches(workdir: Path, config: SoakConfig) -> list[str]:
    """One CSV per batch; images are distinct 64x64 synthetic photos (relative paths)."""
    import csv

    from bria_dagster.engine.synthetic import CATEGORIES, make_product_photo

    cats = sorted(CATEGORIES)
    (workdir / "catalogs").mkdir(parents=True, exist_ok=True)
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for b in range(config.batches):
        batch = f"soak{b}"
        rows = []
        for i in range(config.rows):
            seed = b * 1_000_000 + i
            sku = f"{batch}-{i:05d}"
            path = workdir / "images" / f"{sku}.jpg"
            size = (config.image_px, config.image_px)
            path.write_bytes(make_product_photo(cats[i % len(cats)], seed, size)[0])
            rows.append({"sku": sku, "image_url": f"../images/{sku}.jpg"})
        with (workdir / "catalogs" / f"{batch}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["sku", "image_url"])
            writer.writeheader()
            writer.writerows(rows)
        names.append(batch)
    return names


def make_home(workdir: Path, partitions: list[str], pool_limit: int) -> Path:
    import dagster as dg

    home = workdir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    granularity: op\n")
    # Not `with instance:` (it leaves a process-wide context variable behind).
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        instance.add_dynamic_partitions("product_images_batches", partitions)
        instance.event_log_storage.set_concurrency_slots(POOL, pool_limit)
    finally:
        instance.dispose()
    return home


def journal_rows(path: Path) -> dict[str, str]:
    """fingerprint -> request id of every journaled request (readable while others write)."""
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT fingerprint, request_id FROM requests").fetchall())
    except sqlite3.OperationalError:  # table not created yet
        return {}
    finally:
        db.close()


class Runs:
    """The worker subprocesses, one log file each."""

    def __init__(self, workdir: Path, env: dict[str, str], config: SoakConfig) -> None:
        self.workdir = workdir
        self.env = env
        self.knobs = json.dumps(
            {
                "max_concurrency": config.max_concurrency,
                "poll_interval_s": config.poll_interval_s,
                "retry_base_delay_s": config.retry_base_delay_s,
                "on_terminate": config.on_terminate,
                "termination_grace_s": config.termination_grace_s,
                "max_unjournaled_submits": config.max_unjournaled_submits,
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def journal(self, partition: str) -> Path:
        return self.workdir / "journals" / f"{partition}.sqlite"

    def start(self, partition: str, label: str) -> None:
        log = self.workdir / "logs" / f"{label}.log"
        log.parent.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "worker",
            str(self.workdir / "catalogs"),
            str(self.workdir / "data"),
            partition,
            str(self.journal(partition)),
            self.knobs,
        ]
        with log.open("wb") as fh:
            self.procs[label] = subprocess.Popen(
                cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.logs[label] = log

    def result(self, label: str) -> dict[str, Any] | None:
        for line in reversed(self.logs[label].read_text(errors="replace").splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        return None

    def tail(self, label: str, chars: int = 3000) -> str:
        return self.logs[label].read_text(errors="replace")[-chars:]


def kill_mid_batch(
    runs: Runs, server: Any, victim: str, partitions: list[str], config: SoakConfig
) -> dict[str, Any]:
    """SIGKILL the victim once it has journaled requests and no submit is in flight."""
    proc = runs.procs[victim]
    deadline = time.monotonic() + config.timeout_s
    tries = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return {"killed": False, "reason": f"the victim finished first (rc {proc.returncode})"}
        if len(journal_rows(runs.journal(victim))) < config.kill_after:
            time.sleep(0.02)
            continue
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.25)  # bytes already in the socket reach the server meanwhile
        submissions = server.stats()["submissions"]
        journaled = sum(len(journal_rows(runs.journal(p))) for p in partitions)
        if submissions == journaled:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            rows = journal_rows(runs.journal(victim))
            return {
                "killed": True,
                "tries": tries + 1,
                "server_submissions_at_kill": submissions,
                "victim_journaled": rows,
            }
        tries += 1
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGCONT)
    return {"killed": False, "reason": f"no quiet moment to kill in {tries} tries"}


def release_killed_run(
    home: Path, victim: str, server: Any, timeout_s: float
) -> tuple[list[str], int, float]:
    """Free the dead run's pool slot and mark it failed, once its fal jobs have drained.

    Returns the freed run ids, how many pool slots the dead run still held, and the time
    the slot was freed (the killed step's end).
    """
    import dagster as dg
    from dagster import DagsterRunStatus, RunsFilter

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = server.stats()
        if s["in_progress"] == 0 and s["in_queue"] == 0:
            break
        time.sleep(0.05)
    instance = dg.DagsterInstance.from_config(str(home))
    freed: list[str] = []
    held: list[str] = []
    released_at = time.time()
    try:
        dead = instance.get_runs(
            filters=RunsFilter(
                tags={"dagster/partition": victim},
                statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING],
            )
        )
        claims = instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
        held = [c.run_id for c in claims if c.run_id in {r.run_id for r in dead}]
        released_at = time.time()
        for run in dead:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            instance.report_run_failed(run)
            freed.append(run.run_id)
    finally:
        instance.dispose()
    return freed, len(held), released_at


def step_spans(home: Path, released_at: float | None) -> list[tuple[float, float, str]]:
    """(start, end, run id) of every product_cutouts step; a killed step ends when released."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    spans = []
    try:
        for run in instance.get_runs():
            times = {
                e.dagster_event.event_type_value: e.timestamp
                for e in instance.all_logs(run.run_id)
                if e.dagster_event and e.step_key == STEP
            }
            if "STEP_START" not in times:
                continue
            end = times.get("STEP_SUCCESS") or times.get("STEP_FAILURE") or released_at
            spans.append((times["STEP_START"], end or time.time(), run.run_id))
    finally:
        instance.dispose()
    return spans


def max_overlap(spans: list[tuple[float, float, str]]) -> int:
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    peak = running = 0
    for _, delta in events:  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def read_partition(storage: Path, partition: str) -> Any:
    from bria_dagster.records.tables import read_table, table_path

    return read_table(table_path(str(storage), TABLE, partition))


def check(checks: list[dict[str, Any]], name: str, passed: bool, detail: str) -> None:
    checks.append({"name": name, "passed": bool(passed), "detail": detail})


def run_soak(config: SoakConfig, workdir: Path) -> dict[str, Any]:
    """Run the whole soak in ``workdir``; returns figures and PASS/FAIL checks."""
    from bria_dagster.testing import FalServerProcess  # the parent's only, not the clients'

    partitions = write_batches(workdir, config)
    home = make_home(workdir, partitions, config.pool_limit)
    server = FalServerProcess(
        workdir,
        key="soak-key",
        latency=config.latency,
        max_in_progress=config.server_slots,
        retry_after=0.05,
        seed=config.seed,
        **config.faults,
    )
    checks: list[dict[str, Any]] = []
    figures: dict[str, Any] = {
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "faults"},
        "fault_rates": config.faults,
        "steps": ["remove"],
        "partitions": partitions,
    }
    try:
        env = {
            **os.environ,
            **server.env,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        runs = Runs(workdir, env, config)
        started = time.monotonic()
        for i, p in enumerate(partitions):
            runs.start(p, p)
            if config.stagger and i == 0:
                first = runs.procs[p]
                while first.poll() is None and server.stats()["submissions"] == 0:
                    time.sleep(0.05)
        victim = partitions[config.kill_partition] if config.kill else None
        kill: dict[str, Any] = {}
        released_at: float | None = None
        if victim is not None:
            kill = kill_mid_batch(runs, server, victim, partitions, config)
            if kill["killed"]:
                freed, held, released_at = release_killed_run(
                    home, victim, server, config.timeout_s
                )
                kill["freed_runs"] = freed
                kill["pool_slots_held_by_dead_run"] = held
                runs.start(victim, victim + "-rerun")
        for label, proc in runs.procs.items():
            remaining = max(1.0, config.timeout_s - (time.monotonic() - started))
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                figures.setdefault("timed_out", []).append(label)
        wall = time.monotonic() - started
        stats = server.stats()
    finally:
        server.stop()

    # ---- per-run results
    results = {}
    for label in runs.procs:
        if victim is not None and label == victim and kill.get("killed"):
            continue
        res = runs.result(label)
        results[label] = res
        ok = res is not None and res["success"] and runs.procs[label].returncode == 0
        check(checks, f"run {label} succeeded", ok, "" if ok else runs.tail(label))
    figures["runs"] = results

    # ---- tables
    total_rows = ok_rows = 0
    tables: dict[str, Any] = {}
    for p in partitions:
        frame = read_partition(workdir / "data", p)
        if frame is None:
            tables[p] = None
            check(checks, f"table {p} written", False, "no Parquet table")
            continue
        statuses = frame["status"].value_counts().to_dict()
        expected = {f"{p}-{i:05d}" for i in range(config.rows)}
        tables[p] = {"rows": len(frame), "status": statuses}
        total_rows += len(frame)
        ok_rows += int((frame["status"] == "ok").sum())
        bad = frame[frame["status"] != "ok"][["sku", "error_class", "error_message"]]
        check(
            checks,
            f"table {p}: every catalog row ok",
            set(frame["sku"]) == expected and len(frame) == config.rows and bad.empty,
            f"{len(frame)} rows, status {statuses}"
            + ("" if bad.empty else f"; first failures {bad.head(3).to_dict('records')}"),
        )
    figures["tables"] = tables
    n = config.batches * config.rows
    figures["rows_ok"] = f"{ok_rows}/{n}"

    # ---- server counters
    peak = stats["max_in_progress_by_key"].get(server.key, 0)
    bound = config.pool_limit * config.max_concurrency
    figures["server"] = {
        k: stats[k]
        for k in (
            "submissions",
            "distinct_requests",
            "duplicate_submissions",
            "completed",
            "failed",
            "cancelled",
            "billed_jobs",
            "billed_cost_usd",
            "status_calls",
            "result_calls",
            "file_gets",
            "unauthorized",
        )
    }
    figures["peak_in_flight"] = {"key": server.key, "peak": peak, "bound": bound}
    figures["faults_injected"] = stats["faults"]
    figures["faults_by_op"] = stats["faults_by_op"]
    retries = [r["retries"] for r in results.values() if r and r.get("retries") is not None]
    figures["client_retries_completed_runs"] = sum(retries)
    figures["wall_s"] = round(wall, 2)
    figures["images_per_s"] = round(n / wall, 1) if wall else None
    check(
        checks,
        "0 duplicate paid submissions",
        stats["duplicate_submissions"] == 0,
        f"duplicate_submissions={stats['duplicate_submissions']}",
    )
    check(
        checks,
        "accepted submissions == rows (each image paid once)",
        stats["submissions"] == n and stats["distinct_requests"] == n,
        f"submissions={stats['submissions']} distinct={stats['distinct_requests']} rows={n}",
    )
    check(
        checks,
        "peak in-flight <= pool limit x max_concurrency",
        peak <= bound,
        f"peak {peak} for key {server.key}, bound {config.pool_limit} x "
        f"{config.max_concurrency} = {bound}",
    )
    overlap = max_overlap(step_spans(home, released_at))
    figures["max_overlapping_fal_steps"] = overlap
    check(
        checks,
        "fal steps holding the pool at once <= pool limit (Dagster event log)",
        overlap <= config.pool_limit,
        f"max {overlap} overlapping {STEP} steps, limit {config.pool_limit}"
        + (
            ""
            if overlap <= config.pool_limit
            else " (steps that reach the pool at the same moment can both be admitted on "
            "Dagster's SQLite instance storage: see SQLITE_POOL_RACE in this script)"
        ),
    )
    injected = sum(stats["faults"].values())
    if any(config.faults.values()):
        check(checks, "faults were injected", injected > 0, f"{injected} faults {stats['faults']}")

    # ---- the kill
    if victim is not None:
        journaled: dict[str, str] = kill.pop("victim_journaled", {}) or {}
        figures["kill"] = {**kill, "victim": victim, "victim_journaled": len(journaled)}
        check(
            checks,
            f"victim {victim} killed mid-batch",
            kill.get("killed", False) and 0 < len(journaled) < config.rows,
            json.dumps({k: v for k, v in kill.items() if k != "freed_runs"}),
        )
        frame = read_partition(workdir / "data", victim)
        rerun = results.get(victim + "-rerun")
        if kill.get("killed") and frame is not None:
            by_fp = dict(zip(frame["request_fingerprint"], frame["request_id"], strict=True))
            same = sum(1 for fp, rid in journaled.items() if by_fp.get(fp) == rid)
            figures["kill"]["reattached"] = same
            check(
                checks,
                "every journaled request re-attached (same request id in the re-run's records)",
                same == len(journaled),
                f"{same}/{len(journaled)} journaled ids found on the re-run's rows",
            )
            calls = rerun.get("calls") if rerun else None
            figures["kill"]["rerun_paid_calls"] = calls
            check(
                checks,
                "the re-run paid only for rows not journaled",
                calls == config.rows - len(journaled),
                f"re-run calls={calls}, rows - journaled = {config.rows - len(journaled)}",
            )
    figures["checks"] = checks
    figures["passed"] = all(c["passed"] for c in checks)
    return figures


def kill_mid_burst(
    workdir: Path,
    *,
    rows: int = 96,
    in_flight: int = 32,
    latency: float = 2.0,
    image_px: int = 256,
    kill_at: int,
    max_unjournaled_submits: int = 4,
) -> dict[str, Any]:
    """SIGKILL one run in the middle of a submit burst (no quiet moment chosen); re-run it.

    ``in_flight`` requests at once, ``latency`` s per job on fal, ``image_px`` photos sent
    inline or uploaded as the backend decides. The kill comes the moment fal has accepted
    ``kill_at`` submissions (past ``in_flight``: in the second burst, while the first
    burst's results are fetched and the next submits go out); ``kill_at=0`` kills between
    bursts instead (the first burst all journaled, the next not yet sent).
    Returns accepted (fal's submissions at the kill), journaled, paid_twice (the re-run's
    duplicate submissions: accepted requests the journal did not record), and whether
    paid_twice is within the bound: ``max_unjournaled_submits``, 0 between bursts.
    """
    from bria_dagster.testing import FalServerProcess  # the parent's only, not the clients'

    between = kill_at == 0
    config = SoakConfig(
        batches=1,
        rows=rows,
        latency=latency,
        max_concurrency=in_flight,
        server_slots=0,
        kill=False,
        faults={k: 0.0 for k in FAULT_RATES},
        image_px=image_px,
        max_unjournaled_submits=max_unjournaled_submits,
    )
    (partition,) = write_batches(workdir, config)
    home = make_home(workdir, [partition], pool_limit=1)
    server = FalServerProcess(workdir, key="burst-key", latency=latency, max_in_progress=0)
    try:
        env = {**os.environ, **server.env, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
        runs = Runs(workdir, env, config)
        journal = runs.journal(partition)
        runs.start(partition, "victim")
        proc = runs.procs["victim"]
        deadline = time.monotonic() + config.timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if between:
                if len(journal_rows(journal)) >= in_flight:
                    break
            elif server.stats()["submissions"] >= kill_at:
                break
            time.sleep(0.005)
        if proc.poll() is not None:
            raise RuntimeError("the victim finished before the kill:\n" + runs.tail("victim"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # bytes already in the socket reach the server meanwhile
        accepted = server.stats()["submissions"]
        journaled = len(journal_rows(journal))
        # The dead run's jobs finish on fal (billed); its pool slot is freed, as an operator
        # would, before the re-run.
        release_killed_run(home, partition, server, config.timeout_s)
        runs.start(partition, "rerun")
        try:
            runs.procs["rerun"].wait(600)
        finally:
            if runs.procs["rerun"].poll() is None:
                runs.procs["rerun"].kill()
        final = server.stats()
    finally:
        server.stop()
    frame = read_partition(workdir / "data", partition)
    rows_ok = None if frame is None else int((frame["status"] == "ok").sum())
    bound = 0 if between else max_unjournaled_submits
    return {
        "when": "between bursts" if between else f"at {kill_at} accepted",
        "rows": rows,
        "in_flight": in_flight,
        "latency_s": latency,
        "image_px": image_px,
        "accepted": accepted,
        "journaled": journaled,
        "paid_twice": final["duplicate_submissions"],
        "bound": bound,
        "passed": final["duplicate_submissions"] <= bound and rows_ok == rows,
        "rerun_rows_ok": rows_ok,
        "billed_jobs": final["billed_jobs"],
    }


def print_report(figures: dict[str, Any]) -> None:
    cfg = figures["config"]
    print(
        f"fault soak: {cfg['batches']} partitions x {cfg['rows']} rows, steps={figures['steps']}, "
        f"latency {cfg['latency']}s, pool '{POOL}' limit {cfg['pool_limit']}, "
        f"max_concurrency {cfg['max_concurrency']}, fault rates {figures['fault_rates']}"
    )
    print(f"wall time: {figures['wall_s']} s ({figures['images_per_s']} images/s)")
    for label, res in figures["runs"].items():
        print(f"  run {label}: {json.dumps(res)}")
    print(f"rows ok: {figures['rows_ok']}   tables: {json.dumps(figures['tables'])}")
    print(f"server: {json.dumps(figures['server'])}")
    print(f"peak in-flight: {json.dumps(figures['peak_in_flight'])}")
    print(f"max overlapping fal steps: {figures['max_overlapping_fal_steps']}")
    print(f"faults injected by kind: {json.dumps(figures['faults_injected'])}")
    print(f"faults by op: {json.dumps(figures['faults_by_op'])}")
    print(
        "client retries (bria.retries of the completed runs; the killed run's are lost): "
        f"{figures['client_retries_completed_runs']}"
    )
    if "kill" in figures:
        print(f"kill: {json.dumps(figures['kill'])}")
    for c in figures["checks"]:
        print(f"[{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    print("RESULT: " + ("PASS" if figures["passed"] else "FAIL"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(*argv[1:6])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--pool-limit", type=int, default=1)
    parser.add_argument("--kill-after", type=int, default=40)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--no-faults", action="store_true", help="a clean baseline run")
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="start the other runs once the first holds the pool (avoids a Dagster SQLite race)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--kill-sweep",
        "--kill-mid-burst",
        action="store_true",
        help="only the SIGKILL-in-a-burst sweep (32 in flight, 2 s latency, 256 px photos): "
        "one run per --kill-at point, each killed and re-run",
    )
    parser.add_argument(
        "--kill-at",
        type=int,
        nargs="+",
        default=list(KILL_POINTS),
        help="accepted submissions at which the sweep kills (0: between bursts)",
    )
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.kill_sweep:
        passed = True
        for kill_at in args.kill_at:
            with tempfile.TemporaryDirectory(prefix="bria-burst-") as tmp:
                fig = kill_mid_burst(Path(tmp), kill_at=kill_at)
            passed = passed and fig["passed"]
            print(
                f"KILL-AT {'between' if kill_at == 0 else kill_at} accepted={fig['accepted']} "
                f"journaled={fig['journaled']} paid_twice={fig['paid_twice']} "
                f"[{'PASS' if fig['passed'] else 'FAIL'}] <= {fig['bound']}  {json.dumps(fig)}",
                flush=True,
            )
        print("RESULT: " + ("PASS" if passed else "FAIL"))
        return 0 if passed else 1
    config = SoakConfig(
        batches=args.batches,
        rows=args.rows,
        latency=args.latency,
        max_concurrency=args.max_concurrency,
        pool_limit=args.pool_limit,
        kill=not args.no_kill,
        kill_after=args.kill_after,
        seed=args.seed,
        stagger=args.stagger,
        faults={k: 0.0 for k in FAULT_RATES} if args.no_faults else dict(FAULT_RATES),
    )
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=False)
        figures = run_soak(config, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bria-soak-") as tmp:
            figures = run_soak(config, Path(tmp))
    print_report(figures)
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
