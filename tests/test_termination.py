"""A run terminated mid-batch (SIGTERM, as a pod eviction or the UI's Terminate sends it).

The run worker (benchmarks/fault_soak.py's, ``job.execute_in_process``) runs the cutouts of
one partition against bria_dagster.testing.fal_server in its own process; fal runs 4 jobs at
once, so of the 8 requests in flight about half wait in fal's queue. SIGTERM arrives once a few
requests are journaled. The worker must stop sending, let every submit in flight land in the
journal, and exit within the grace period; every request fal accepted is then either
journaled (the re-run re-attaches to it) or was cancelled while queued (never billed); a
re-run completes the partition and no image is paid twice.
"""

from __future__ import annotations

import signal
import time

import pytest

from bria_dagster.testing import FalServerProcess
from tests.test_fault_soak import load_soak

ROWS = 24
GRACE_S = 10.0


def wait_idle(server, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["in_progress"] == 0 and stats["in_queue"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError("the fal test server did not go idle")


def terminate_and_rerun(tmp_path, on_terminate: str, sig: int = signal.SIGTERM) -> dict:
    soak = load_soak()
    config = soak.SoakConfig(
        batches=1,
        rows=ROWS,
        latency=1.0,
        max_concurrency=8,
        server_slots=4,
        kill=False,
        faults={k: 0.0 for k in soak.FAULT_RATES},
        on_terminate=on_terminate,
        termination_grace_s=GRACE_S,
    )
    (partition,) = soak.write_batches(tmp_path, config)
    home = soak.make_home(tmp_path, [partition], pool_limit=1)
    server = FalServerProcess(
        tmp_path, key="term-key", latency=config.latency, max_in_progress=config.server_slots
    )
    try:
        env = {
            **soak.os.environ,
            **server.env,
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": str(soak.ROOT),
        }
        runs = soak.Runs(tmp_path, env, config)
        journal = runs.journal(partition)
        runs.start(partition, "first")
        proc = runs.procs["first"]
        deadline = time.monotonic() + 120
        while len(soak.journal_rows(journal)) < 6:  # mid-batch: some accepted, most not sent
            assert proc.poll() is None, runs.tail("first")
            assert time.monotonic() < deadline, runs.tail("first")
            time.sleep(0.01)
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(GRACE_S + 30)
        exit_s = time.monotonic() - sent
        at_exit = server.stats()
        journaled = soak.journal_rows(journal)
        idle = wait_idle(server)  # kept jobs finish on fal meanwhile (and are billed once)
        runs.start(partition, "rerun")
        runs.procs["rerun"].wait(180)
        final = server.stats()
    finally:
        server.stop()
    frame = soak.read_partition(tmp_path / "data", partition)
    rerun = runs.result("rerun")
    return {
        "exit_s": exit_s,
        "first_log": runs.logs["first"].read_text(errors="replace"),
        "at_exit": at_exit,
        "idle": idle,
        "journaled": journaled,
        "final": final,
        "frame": frame,
        "rerun": rerun,
        "rerun_log": runs.tail("rerun"),
    }


def check_common(out: dict) -> None:
    # Ended within the grace period (plus Dagster's own teardown), mid-batch, not finished.
    assert out["exit_s"] < GRACE_S + 8, (out["exit_s"], out["first_log"])
    assert "winding down" in out["first_log"] or "wound down" in out["first_log"]
    at_exit = out["at_exit"]
    assert 0 < at_exit["submissions"] < ROWS
    # Nothing was submitted after the worker exited.
    assert out["idle"]["submissions"] == at_exit["submissions"]
    # The re-run completed every row.
    rerun, frame = out["rerun"], out["frame"]
    assert rerun is not None and rerun["success"], out["rerun_log"]
    assert frame is not None and len(frame) == ROWS and (frame["status"] == "ok").all()
    # Every journaled request was re-attached (its id is on the re-run's row)...
    by_fp = dict(zip(frame["request_fingerprint"], frame["request_id"], strict=True))
    assert all(by_fp[fp] == rid for fp, rid in out["journaled"].items())
    assert rerun["calls"] == ROWS - len(out["journaled"])
    # ... and no image was paid twice: one billed job per row, all told.
    final = out["final"]
    assert final["billed_jobs"] == ROWS
    assert final["distinct_requests"] == ROWS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_terminated_run_cancels_queued_requests_and_the_rerun_pays_each_image_once(tmp_path, sig):
    out = terminate_and_rerun(tmp_path, "cancel_queued", sig)
    check_common(out)
    at_exit, final = out["at_exit"], out["final"]
    # Every request fal accepted is journaled (re-attached by the re-run) or was cancelled
    # while queued (never billed, sent again by the re-run): nothing is unaccounted for.
    assert at_exit["cancelled"] > 0
    assert len(out["journaled"]) + at_exit["cancelled"] == at_exit["submissions"]
    assert final["duplicate_submissions"] == at_exit["cancelled"]
    assert final["submissions"] == ROWS + at_exit["cancelled"]


def test_terminated_run_keeps_accepted_requests_for_reattach(tmp_path):
    out = terminate_and_rerun(tmp_path, "keep")
    check_common(out)
    at_exit, final = out["at_exit"], out["final"]
    assert at_exit["cancelled"] == 0 and at_exit["cancel_calls"] == 0
    assert len(out["journaled"]) == at_exit["submissions"]  # every accepted id journaled
    assert final["duplicate_submissions"] == 0 and final["submissions"] == ROWS
