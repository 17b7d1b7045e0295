"""One Dagster run of the remove step on a Postgres-backed instance (for the SIGKILL test).

Usage (cwd: the run's own working directory; DAGSTER_HOME: its own instance folder whose
dagster.yaml sets `storage: postgres:`; env from FalTestServer.env()):

    python tests/pg_run_worker.py CATALOG_DIR PARTITION

The storage is the relative folder ``bria_data`` (local to this process' working directory),
and no journal setting is given: the request journal defaults to the instance's Postgres.
Prints "RESULT <json>" at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg

from bria_dagster import BriaResource, PipelineSettings, build_definitions


def main(catalog_dir: str, partition: str) -> int:
    settings = PipelineSettings(catalog_dir=catalog_dir, steps=("remove",))
    bria = BriaResource(
        backend="fal",
        fal_key=dg.EnvVar("FAL_KEY"),
        file_roots=[str(Path(catalog_dir).parent)],
        max_concurrency=4,
        poll_interval_s=0.05,
    )
    defs = build_definitions(settings, storage="bria_data", bria=bria, operations=False)
    instance = dg.DagsterInstance.get()
    try:
        if not instance.has_dynamic_partition("product_images_batches", partition):
            instance.add_dynamic_partitions("product_images_batches", [partition])
        result = defs.resolve_job_def("product_images").execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False
        )
        calls = None
        for mat in result.asset_materializations_for_node("product_images_image_steps"):
            value = mat.metadata.get("bria.remove.calls")
            calls = getattr(value, "value", calls)
    finally:
        instance.dispose()
    print("RESULT " + json.dumps({"success": result.success, "calls": calls}), flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
