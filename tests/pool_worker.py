"""Materialize one partition's remove step on the fal test server in its own process.

Usage: python tests/pool_worker.py CATALOG_DIR STORAGE PARTITION
(env: DAGSTER_HOME, FAL_RUN_HOST, FAL_QUEUE_RUN_HOST, SSL_CERT_FILE, FAL_KEY)
"""

from __future__ import annotations

import sys

import dagster as dg

from bria_dagster import BriaResource, PipelineSettings, build_definitions


def main(catalog_dir: str, storage: str, partition: str) -> int:
    settings = PipelineSettings(catalog_dir=catalog_dir, steps=("remove",))
    bria = BriaResource(
        backend="fal",
        fal_key=dg.EnvVar("FAL_KEY"),
        file_roots=[catalog_dir.rsplit("/", 1)[0]],
        max_concurrency=4,
        poll_interval_s=0.05,
    )
    defs = build_definitions(settings, storage=storage, bria=bria)
    job = defs.resolve_job_def("product_images")
    result = job.execute_in_process(partition_key=partition, instance=dg.DagsterInstance.get())
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
