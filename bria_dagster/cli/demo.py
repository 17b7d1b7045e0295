"""``bria-dagster demo``: materialize every sample catalog batch end to end, offline.

Uses a real Dagster instance (``DAGSTER_HOME``, default ``./.dagster_home``), so
``make ui`` (``dg dev -f definitions.py``) afterwards shows the same runs, partitions
and materializations.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["main"]


def main(base: str = "bria_data", examples: str = "examples") -> int:
    examples_dir = Path(examples).resolve()
    if not (examples_dir / "catalogs").is_dir():
        from .samples import write_sample_catalogs

        write_sample_catalogs(examples_dir)
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # The fal steps share the "bria" pool: cap it with `dagster instance concurrency set`.
        config.write_text(
            "concurrency:\n  pools:\n    default_limit: 2\n    granularity: op\n"
            "telemetry:\n  enabled: false\n"  # the demo is offline
        )
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster requires an absolute path
    if not os.environ.get("FAL_KEY"):
        print("FAL_KEY is not set: running on the embedded local engine (offline).")

    import dagster as dg

    from ..lineage.frame import trace
    from ..orchestration.pipeline import ProductImagePipeline
    from ..steps.catalog import FORMATS
    from ..steps.settings import PipelineSettings

    storage = str(Path(base).resolve())
    pipeline = ProductImagePipeline(
        settings=PipelineSettings(catalog_dir=str(examples_dir / "catalogs")), storage=storage
    )
    job = pipeline.build_definitions(operations=False).resolve_job_def(pipeline.job_name)
    batches = sorted(p.stem for p in (examples_dir / "catalogs").iterdir() if p.suffix in FORMATS)
    instance = dg.DagsterInstance.get()
    partitions = pipeline.partitions_def.name
    existing = set(instance.get_dynamic_partitions(partitions))
    new = [b for b in batches if b not in existing]
    if new:
        instance.add_dynamic_partitions(partitions, new)
    failed_runs = 0
    for batch in batches:
        started = time.perf_counter()
        with interrupt_handlers_restored():
            result = job.execute_in_process(
                partition_key=batch,
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        counts = []
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            meta = mat.metadata if mat else {}
            name = mat.asset_key.to_user_string() if mat else "?"
            if "audit_report" in meta:  # the batch's HTML page, not a record table
                counts.append(f"{name}: {_v(meta['audit_report'])}")
                continue
            ok = meta.get("rows_ok")
            reused = meta.get("rows_reused")
            failed = meta.get("rows_failed")
            counts.append(f"{name}: {_v(ok)} ok, {_v(reused)} reused, {_v(failed)} failed")
        status = "succeeded" if result.success else "FAILED"
        failed_runs += 0 if result.success else 1
        took = time.perf_counter() - started
        print(f"batch {batch}: run {result.run_id[:8]} {status} in {took:.1f}s")
        for line in counts:
            print(f"  {line}")

    print(f"\nimages:  {storage}/images   (content-addressed, sha256/<ab>/<sha>.<ext>)")
    print(f"lineage: {storage}/tables/<asset>/<batch>.parquet   (one ImageRecord row per image)")
    print(f"dagster: {home}   (runs, partitions and materializations of this demo)")
    print(f"\nsee it in the UI:  make ui   (= DAGSTER_HOME={home} dg dev -f definitions.py)")
    try:
        from ..lineage.frame import load_records
        from ..records.schema import FAILED, NOOP_BACKEND

        records = load_records(storage)
        # An expansion that was sent: a no-op one is its scene's own bytes.
        made = (records["status"] != FAILED) & (records["backend"] != NOOP_BACKEND)
        outputs = records[(records["step"] == "expand") & made]
        if len(outputs):
            sha = outputs.iloc[0]["image_sha256"]
            chain = trace(sha, storage)  # through the index the CLI command below uses
            steps = " <- ".join(str(s) for s in chain["step"])
            cli = _cli_command()
            print(f"\ntrace example: {cli} lineage trace {sha[:12]} --base {base}")
            print(f"  {steps}")
    except Exception as exc:  # the demo's last line is a hint, never a crash
        print(f"(trace example unavailable: {exc})", file=sys.stderr)
    return 1 if failed_runs else 0


def _cli_command() -> str:
    """``bria-dagster`` as it can be typed from here: the script beside this interpreter
    (``.venv/bin/bria-dagster`` after ``make demo``, whose venv is not activated), else
    ``python -m bria_dagster.cli.commands`` with this interpreter."""
    bindir = Path(sys.executable).parent
    script = bindir / "bria-dagster"
    if os.environ.get("VIRTUAL_ENV") and Path(os.environ["VIRTUAL_ENV"]) == bindir.parent:
        return "bria-dagster"  # an activated venv has it on PATH
    if script.exists():
        return _relative(script)
    return f"{_relative(Path(sys.executable))} -m bria_dagster.cli.commands"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def interrupt_handlers_restored() -> Iterator[None]:
    """Puts SIGINT's and SIGTERM's handlers back as they were once the block ends.

    Dagster's in-process execution (1.13, ``dagster._utils.interrupts``) restores
    SIGINT's handler when the run ends but leaves SIGTERM mapped to it: after the first
    batch, SIGTERM would raise KeyboardInterrupt in the demo instead of ending it, and
    with SIGINT ignored (``make demo &`` from a script) SIGTERM would be ignored by the
    demo and by anything it starts. During the run Dagster's own handlers are in force."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread sets handlers, Dagster's included
        return
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None and signal.getsignal(signum) != handler:
                signal.signal(signum, handler)


def _v(entry: object) -> object:
    """The plain value of a metadata entry."""
    return getattr(entry, "value", entry)


if __name__ == "__main__":
    raise SystemExit(main())
