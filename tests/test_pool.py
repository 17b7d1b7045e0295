"""Cross-run limits: the fal steps share a Dagster pool, so concurrent runs queue for it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import (
    _calculate_timeout_interval,
)

from bria_dagster import PipelineSettings, build_definitions
from bria_dagster.orchestration.pool_wait import MAX_CLAIM_CHECK_INTERVAL_S
from tests.test_pipeline import product, write_catalog

REPO = Path(__file__).resolve().parents[1]


def test_two_partitions_at_once_never_exceed_one_steps_worth_of_requests(tmp_path, fal_server):
    # p1's fal step lasts ~15 s (24 products, 4 at a time, 2.5 s each): long enough for p2
    # to start (a cold Python + Dagster import: seconds, many on a busy machine) and find
    # the pool slot taken. p2 is smaller so the test stays short.
    fal_server.configure(latency=2.5)
    for offset, (batch, count) in enumerate((("p1", 24), ("p2", 8))):
        rows = [
            {
                "sku": f"{batch}-{i}",
                "image_url": product(tmp_path, f"{batch}-{i}", 100 * offset + i),
            }
            for i in range(count)
        ]
        write_catalog(tmp_path, rows, batch=batch)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    granularity: op\n")
    # Not `with instance:` (it sets a process-wide context variable that outlives the test).
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("product_images_batches", ["p1", "p2"])
    instance.event_log_storage.set_concurrency_slots("bria", 1)  # one fal step at a time
    instance.dispose()

    env = {
        **os.environ,
        **fal_server.env("test-key-pool"),
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(REPO),
    }
    storage = str(tmp_path / "data")

    def start(batch: str) -> subprocess.Popen:
        cmd = [sys.executable, str(REPO / "tests" / "pool_worker.py")]
        cmd += [str(tmp_path / "catalogs"), storage, batch]
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    # The second run starts once the first one's fal step holds the pool slot: Dagster's
    # SQLite storage can admit two claims made at the same instant (README, "Going to
    # production": use Postgres storage when runs in several processes share a pool).
    procs = [start("p1")]
    deadline = time.monotonic() + 120
    while fal_server.stats()["submissions"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.append(start("p2"))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "blocked by limit for pool bria" in outputs[1]  # p2 really waited for the pool

    stats = fal_server.stats()
    assert stats["submissions"] == 32
    assert stats["duplicate_submissions"] == 0
    # Each step keeps <= 4 requests in flight (max_concurrency); the pool keeps the two
    # runs' steps apart, so the service never saw more than 4 at once from this key.
    assert stats["max_in_progress_by_key"]["test-key-pool"] <= 4

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        spans = []
        for run in instance.get_runs():
            events = instance.all_logs(run.run_id)
            times = {
                e.dagster_event.event_type_value: e.timestamp
                for e in events
                if e.dagster_event and e.step_key == "product_images_image_steps"
            }
            spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
    finally:
        instance.dispose()
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"the fal steps overlapped: {spans}"


def test_a_run_waiting_for_a_pool_slot_sleeps_between_claim_checks(tmp_path):
    # A code location with a pipeline: its runs that wait for a slot of a full pool (the
    # warm runs of op_granularity_run_buffer) sleep until their next claim check; Dagster's
    # in-process executor loop alone spins, a CPU core per waiting run.
    build_definitions(
        PipelineSettings(catalog_dir=str(tmp_path)), storage=str(tmp_path), operations=False
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    granularity: op\n")
    instance = dg.DagsterInstance.from_config(str(home))
    storage = instance.event_log_storage
    storage.set_concurrency_slots("bria", 1)
    assert storage.claim_concurrency_slot("bria", "another-run", "its-step").is_claimed

    @dg.asset(pool="bria")
    def pooled() -> int:
        return 1

    results = []
    waiting = threading.Thread(
        target=lambda: results.append(dg.materialize([pooled], instance=instance))
    )
    waiting.start()
    try:
        deadline = time.monotonic() + 60
        while storage.get_concurrency_info("bria").pending_step_count == 0:
            assert time.monotonic() < deadline, "the run never asked for the slot"
            time.sleep(0.05)
        clock = time.pthread_getcpuclockid(waiting.ident)
        before = time.clock_gettime(clock)
        time.sleep(3)
        spent = time.clock_gettime(clock) - before
    finally:
        storage.free_concurrency_slot_for_step("another-run", "its-step")
        waiting.join(timeout=60)
        instance.dispose()
    assert results and results[0].success  # it took the slot once freed
    assert spent < 0.15, f"{spent:.2f} s of CPU in 3 s of waiting for a pool slot"
    # A run that has waited long (25 checks, over a minute) still asks every 2 s, not
    # every 15 s: a freed slot does not sit idle while a warm run sleeps.
    assert _calculate_timeout_interval(None, 25) == MAX_CLAIM_CHECK_INTERVAL_S == 2
