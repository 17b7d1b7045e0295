"""Many batches at once through Dagster's run queue (benchmarks/scale_out.py, scaled down):
a Postgres instance, the QueuedRunCoordinator launching 4 partition runs at once from
`dagster-daemon run`, each in its own process, and the pool 'bria' capping the image steps
across runs (no stagger: Postgres admits a pool claim atomically)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_scale_out():
    spec = importlib.util.spec_from_file_location("scale_out", REPO / "benchmarks/scale_out.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_out"] = module
    spec.loader.exec_module(module)
    return module


def test_daemon_runs_four_partitions_at_once_and_the_pool_bounds_requests_in_flight(
    postgres_server, fal_server, tmp_path
):
    scale_out = load_scale_out()
    fal_server.configure(latency=0.3)  # no server-side cap: the peak is the client's own
    key = "test-key-scale-out"
    result = scale_out.run_scale_out(
        tmp_path / "project",
        pg_url=postgres_server.create_database("scale_out_test"),
        fal_env=fal_server.env(key),
        fal_stats=fal_server.stats,
        batches=4,
        rows=12,
        latency=0.3,
        server_slots=0,
        runs_at_once=4,
        pool_limit=2,
        max_concurrency=4,
        timeout_s=240,
    )
    summary = scale_out.scale_out_line(result)
    assert result["failed_runs"] == [] and result["ok_rows"] == 48, summary
    # The daemon launched all four runs at once, each in a process of its own.
    assert result["runs_at_once"] == 4, result
    assert result["run_processes"] == 4, result["pids_per_run"]
    # The pool admitted at most 2 image steps at once across the four runs ...
    assert result["image_steps"] == 4 and result["pool_peak"] <= 2, result
    # ... so the service never had more than 2 x 4 of this key's jobs in flight
    # (4 runs unpooled could reach 16).
    assert 0 < result["peak_in_flight"] <= result["bound"] == 8, result
    assert result["submissions"] == 48 and result["duplicates"] == 0, result
    assert result["paid_twice"] == 0 and result["billed_jobs"] == 48, result


def test_readme_shows_the_tested_dagster_yaml():
    scale_out = load_scale_out()
    tested = scale_out.DAGSTER_YAML.format(runs_at_once=4, run_buffer=2)
    assert f"```yaml\n{tested}```" in (REPO / "README.md").read_text()
