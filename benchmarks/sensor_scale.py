"""The catalog sensor at catalog scale: 10,000 batch files in an S3 landing folder.

    .venv/bin/python benchmarks/sensor_scale.py [--files 10000] [--materialized 10000]

Starts the loopback S3 server of the tests (moto, ``bria_dagster.testing.s3``), uploads
``--files`` small catalog CSVs (a few rows each) and times sensor ticks built with
``dg.build_sensor_context`` against an ephemeral instance:

- first tick: every file new (all read and hashed, one partition + run each);
- unchanged tick: nothing changed, the target is no object body read and under 5 s;
- a tick with 3 changed and 5 new files;
- a tick with a lost cursor, after ``--materialized`` batches got a materialization
  recording their ``catalog_sha256`` (as runs do): those files are read to compare;
- an unchanged tick again after it.

S3 requests are counted per API call (``get_object`` = bodies read). The last line is
``SENSOR files=... first_tick_s=... unchanged_tick_s=... bodies_read_unchanged=...
lost_cursor_tick_s=... cursor_kb=...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def catalog_csv(i: int, version: int = 0) -> bytes:
    rows = "".join(
        f"SKU{i:05d}-{r},https://images.example.com/{i:05d}/{r}.jpg,on white oak v{version}\n"
        for r in range(4)
    )
    return ("sku,image_url,prompt\n" + rows).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--materialized", type=int, default=None, help="default: all")
    args = parser.parse_args()
    materialized = args.files if args.materialized is None else args.materialized

    import dagster as dg
    import fsspec

    from bria_dagster import PipelineSettings, ProductImagePipeline
    from bria_dagster.orchestration.automation import build_catalog_sensor
    from bria_dagster.testing import counting_s3_requests, running_s3_server

    def tick(sensor, instance, cursor):
        with counting_s3_requests() as calls:
            started = time.perf_counter()
            result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
            elapsed = time.perf_counter() - started
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        return result, elapsed, calls

    def show(label, result, elapsed, calls):
        requests = ", ".join(
            f"{k}={v}" + (f" ({calls[k + '_s']:.2f} s)" if k + "_s" in calls else "")
            for k, v in sorted(calls.items())
            if not k.endswith("_s")
        )
        print(
            f"{label:<22} {elapsed:7.2f} s  runs={len(result.run_requests):<6} "
            f"changes={len(result.asset_events):<4} cursor={len(result.cursor) / 1024:6.1f} KB  "
            f"S3: {requests}",
            flush=True,
        )

    with running_s3_server():
        fs = fsspec.filesystem("s3")
        fs.mkdir("landing")
        folder = "s3://landing/catalogs"
        started = time.perf_counter()
        names = [f"batch-{i:05d}" for i in range(args.files)]
        # Seeded straight into the server's store (same process): a PUT through moto's
        # HTTP front costs ~20 ms here. The sensor still reads everything over HTTP.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for i, name in enumerate(names):
            backend.put_object("landing", f"catalogs/{name}.csv", catalog_csv(i))
        print(f"stored {args.files} catalog files in {time.perf_counter() - started:.1f} s")

        pipeline = ProductImagePipeline(settings=PipelineSettings(catalog_dir=folder))
        sensor = build_catalog_sensor(pipeline)
        instance = dg.DagsterInstance.ephemeral()

        first, first_s, calls = tick(sensor, instance, None)
        show("first tick (all new)", first, first_s, calls)
        assert len(first.run_requests) == args.files

        unchanged, unchanged_s, unchanged_calls = tick(sensor, instance, first.cursor)
        show("unchanged tick", unchanged, unchanged_s, unchanged_calls)
        assert unchanged.run_requests == [] and unchanged.asset_events == []

        fs.pipe({f"{folder}/{names[i]}.csv": catalog_csv(i, version=1) for i in (1, 2, 3)})
        fs.pipe({f"{folder}/late-{i}.csv": catalog_csv(90_000 + i) for i in range(5)})
        delta, delta_s, calls = tick(sensor, instance, unchanged.cursor)
        show("3 changed + 5 new", delta, delta_s, calls)
        assert len(delta.run_requests) == 5 and len(delta.asset_events) == 3

        # What runs record: each materialization of catalog_batch carries the sha256 it read.
        started = time.perf_counter()
        shas = {r.partition_key: r.run_key.split(":", 1)[1] for r in first.run_requests}
        source = pipeline.asset_key("source")
        for batch in names[:materialized]:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    source, partition=batch, metadata={"catalog_sha256": shas[batch]}
                )
            )
        print(f"recorded {materialized} materializations in {time.perf_counter() - started:.1f} s")

        lost, lost_s, lost_calls = tick(sensor, instance, None)
        show("lost cursor", lost, lost_s, lost_calls)
        assert lost.run_requests == [] and lost.dynamic_partitions_requests == []
        expected_reports = len([i for i in (1, 2, 3) if i < materialized])
        assert len(lost.asset_events) == expected_reports, len(lost.asset_events)

        after, after_s, after_calls = tick(sensor, instance, lost.cursor)
        show("unchanged after it", after, after_s, after_calls)
        assert after.asset_events == [] and after_calls["get_object"] == 0

    listing_s, pages = unchanged_calls["list_objects_v2_s"], unchanged_calls["list_objects_v2"]
    print(
        f"unchanged tick: {listing_s:.2f} s waiting for the listing ({pages} ListObjectsV2 "
        f"pages, {listing_s / max(pages, 1):.2f} s each from this server), "
        f"{unchanged_s - listing_s:.2f} s the sensor's own work"
    )
    print(
        f"SENSOR files={args.files} first_tick_s={first_s:.2f} "
        f"unchanged_tick_s={unchanged_s:.2f} "
        f"bodies_read_unchanged={unchanged_calls['get_object']} "
        f"lost_cursor_tick_s={lost_s:.2f} bodies_read_lost_cursor={lost_calls['get_object']} "
        f"cursor_kb={len(after.cursor) / 1024:.1f}"
    )
    bodies = unchanged_calls["get_object"]
    print(f"{'PASS' if bodies == 0 else 'FAIL'}: an unchanged tick reads no object body ({bodies})")
    fast = "PASS" if unchanged_s < 5 else "FAIL"
    print(f"{fast}: an unchanged tick under 5 s ({unchanged_s:.2f} s)")


if __name__ == "__main__":
    main()
