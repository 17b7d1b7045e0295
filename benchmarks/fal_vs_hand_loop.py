"""bria-dagster against the loop a user would write by hand, on the fal protocol test server.

    .venv/bin/python benchmarks/fal_vs_hand_loop.py [--sizes 50 400 2000] [--latency 0.5]
        [--slots 32] [--repeat 5]

The hand-written loop: plain ``fal_client.AsyncClient`` (submit, then ``handle.get()``),
one ``asyncio.Semaphore(slots)``, and each product carried remove -> replace -> expand
(two aspect ratios) as soon as its previous call returns, every result downloaded.
The pipeline: the same products as a catalog batch, materialized by Dagster
(``catalog_batch`` and the streaming steps) with ``max_concurrency=slots``.

Both run in fresh processes against one server process (0.5 s latency, ``slots`` jobs
in progress per key). Per size it prints one line::

    VS-HAND n=... ideal_s=... hand_ratio=... ours_ratio=... first_product_s=...

ideal = calls x latency / slots (4 calls per product); a ratio is wall / ideal; sizes
under 1,000 run ``--repeat`` times each (hand and ours alternating, fresh storage every
time) and print the median of each side, since their walls are a few seconds. The
hand loop's wall is the whole loop; ours is the steps' Dagster step (the fal work;
``catalog_batch`` fetched the sources before it), with the whole materialization's
wall beside it. ``first_product_s`` (ours; the hand loop's beside it) is the time until
the first product has all its outputs stored. Client CPU ms per request covers the
whole materialization (catalog ingest, Dagster events, checks, metadata). Targets:
ours_ratio <= hand_ratio at every size and <= 1.1 at 2,000.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CALLS_PER_PRODUCT = 4  # remove, replace, expand 1:1, expand 4:5
RATIOS = ("1:1", "4:5")
PROMPT = "on a light oak table, soft daylight"
TARGET_AT_2000 = 1.1
REPEAT_BELOW = 1000


def write_catalog(folder: Path, n: int) -> Path:
    """n products (64 px photos the project generates) as one catalog batch."""
    from bria_dagster.engine.synthetic import CATEGORIES, make_product_photo

    cats = sorted(CATEGORIES)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "catalogs").mkdir(parents=True, exist_ok=True)
    with (folder / "catalogs" / "bench.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "image_url"])
        for i in range(n):
            path = folder / "images" / f"P{i:05d}.jpg"
            path.write_bytes(make_product_photo(cats[i % len(cats)], 7000 + i, (64, 64))[0])
            writer.writerow([f"P{i:05d}", str(path)])
    return folder


# ----------------------------------------------------------------------------- clients


def client_hand(folder: str, slots: int) -> dict[str, Any]:
    """The hand-written loop over plain fal-client."""
    import asyncio
    import base64

    import fal_client
    import httpx

    paths = sorted((Path(folder) / "images").glob("*.jpg"))

    def data_uri(data: bytes, kind: str) -> str:
        return f"data:image/{kind};base64," + base64.b64encode(data).decode()

    async def go() -> dict[str, Any]:
        client = fal_client.AsyncClient()
        slots_sem = asyncio.Semaphore(slots)
        finished: list[float] = []
        calls = 0
        async with httpx.AsyncClient(timeout=60) as http:

            async def call(endpoint: str, arguments: dict[str, Any]) -> tuple[dict, bytes]:
                nonlocal calls
                async with slots_sem:
                    handle = await client.submit(endpoint, arguments=arguments)
                    result = await handle.get()
                calls += 1
                image = result["images"][0] if "images" in result else result["image"]
                reply = await http.get(image["url"])
                reply.raise_for_status()
                return image, reply.content

            async def chain(path: Path) -> None:
                _, cut = await call(
                    "fal-ai/bria/background/remove",
                    {"image_url": data_uri(path.read_bytes(), "jpeg")},
                )
                scene_meta, scene = await call(
                    "fal-ai/bria/background/replace",
                    {"image_url": data_uri(cut, "png"), "prompt": PROMPT, "num_images": 1},
                )
                size = [scene_meta.get("width") or 64, scene_meta.get("height") or 64]
                await asyncio.gather(
                    *(
                        call(
                            "fal-ai/bria/expand",
                            {
                                "image_url": data_uri(scene, "png"),
                                "aspect_ratio": ratio,
                                "canvas_size": size,
                            },
                        )
                        for ratio in RATIOS
                    )
                )
                finished.append(time.perf_counter())

            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(chain(p) for p in paths))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {
            "wall_s": wall,
            "first_product_s": min(finished) - t0,
            "calls": calls,
            "cpu_ms_per_request": 1000 * cpu / max(calls, 1),
        }

    return asyncio.run(go())


def client_ours(folder: str, slots: int) -> dict[str, Any]:
    """The pipeline: catalog_batch and the streaming steps, materialized by Dagster."""
    import dagster as dg
    import pandas as pd

    from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline
    from bria_dagster.records.tables import read_table

    pipeline = ProductImagePipeline(
        name="bench",
        settings=PipelineSettings(
            catalog_dir=f"{folder}/catalogs",
            prompt_template=PROMPT,
            aspect_ratios=RATIOS,
            report=False,  # what the hand loop does too: no audit report (its own asset)
        ),
        storage=f"{folder}/data",
    )
    bria = BriaResource(
        backend="fal", fal_key=dg.EnvVar("FAL_KEY"), file_roots=[folder], max_concurrency=slots
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pipeline.partitions_def.name, ["bench"])
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = dg.materialize(
        pipeline.build_assets(),
        partition_key="bench",
        instance=instance,
        resources={"bria": bria, pipeline.io_manager_key: pipeline.io_manager()},
    )
    total_wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert result.success
    times = {
        e.dagster_event.event_type_value: e.timestamp
        for e in instance.all_logs(result.run_id)
        if e.dagster_event and e.step_key == "bench_image_steps"
    }
    start = times["STEP_START"]
    expansions = read_table(pipeline.store.table_path(pipeline.asset_key("expand"), "bench"))
    assert expansions is not None
    done = expansions.groupby("sku")["created_at"].max()
    first = (pd.Timestamp(done.min()).timestamp()) - start
    metadata: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        if event.materialization is not None:
            metadata.update(
                {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
            )
    calls = sum(int(v) for k, v in metadata.items() if k.endswith(".calls"))
    ok = int((expansions["status"] == "ok").sum())
    return {
        "wall_s": times["STEP_SUCCESS"] - start,
        "total_wall_s": total_wall,
        "first_product_s": first,
        "calls": calls,
        "ok_expansions": ok,
        "cpu_ms_per_request": 1000 * cpu / max(calls, 1),
    }


# ----------------------------------------------------------------------------- parent


def main() -> int:
    from bria_dagster.testing import FalServerProcess  # the parent's only, not the clients'

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 400, 2000])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help=f"runs of each side for sizes under {REPEAT_BELOW} (medians are printed): a "
        "small batch takes a few seconds, so one run of each is mostly noise",
    )
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        kind, folder, slots = args.client
        run = client_hand if kind == "hand" else client_ours
        print(json.dumps(run(folder, int(slots))), flush=True)
        return 0

    print(
        f"fal vs hand loop: latency {args.latency}s, {args.slots} in progress per key; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bria-vs-hand-") as tmp:
        server = FalServerProcess(
            Path(tmp), latency=args.latency, max_in_progress=args.slots, seed=11
        )
        try:
            for n in args.sizes:
                ideal = n * CALLS_PER_PRODUCT * args.latency / args.slots
                reps = args.repeat if n < REPEAT_BELOW else 1
                pairs = []
                for rep in range(reps):  # hand and ours alternate, each on fresh storage
                    folder = write_catalog(Path(tmp) / f"n{n}-{rep}", n)
                    server.reset()
                    hand = server.run_client(
                        __file__, f"hand-{n}-{rep}", ["hand", str(folder), str(args.slots)]
                    )
                    server.reset()
                    ours = server.run_client(
                        __file__, f"ours-{n}-{rep}", ["ours", str(folder), str(args.slots)]
                    )
                    pairs.append((hand, ours, server.stats()))
                    if reps > 1:
                        print(
                            f"  n={n} repetition {rep + 1}/{reps}: hand {hand['wall_s']:.2f}s, "
                            f"ours {ours['wall_s']:.2f}s",
                            flush=True,
                        )
                # The median pair by ours' wall; the ratios are medians of each side.
                hand_ratio = statistics.median(h["wall_s"] for h, _, _ in pairs) / ideal
                ours_ratio = statistics.median(o["wall_s"] for _, o, _ in pairs) / ideal
                hand, ours, stats = sorted(pairs, key=lambda p: p[1]["wall_s"])[len(pairs) // 2]
                print(
                    f"VS-HAND n={n} ideal_s={ideal:.2f} hand_ratio={hand_ratio:.3f} "
                    f"ours_ratio={ours_ratio:.3f} first_product_s={ours['first_product_s']:.2f}",
                    flush=True,
                )
                print(
                    f"  hand: wall {hand['wall_s']:.2f}s, first product "
                    f"{hand['first_product_s']:.2f}s, {hand['calls']} calls, client CPU "
                    f"{hand['cpu_ms_per_request']:.2f} ms/request; ours: steps "
                    f"{ours['wall_s']:.2f}s (whole materialization {ours['total_wall_s']:.2f}s), "
                    f"{ours['calls']} calls, {ours['ok_expansions']} expansions ok, client CPU "
                    f"{ours['cpu_ms_per_request']:.2f} ms/request (whole run); server: "
                    f"duplicates {stats['duplicate_submissions']}, peak in progress "
                    f"{stats['max_in_progress_seen']}",
                    flush=True,
                )
                if ours_ratio > hand_ratio:
                    missed.append(f"n={n}: ours {ours_ratio:.3f} > hand {hand_ratio:.3f}")
                if n >= 2000 and ours_ratio > TARGET_AT_2000:
                    missed.append(f"n={n}: ours {ours_ratio:.3f} > {TARGET_AT_2000}")
        finally:
            server.stop()
    print("targets met" if not missed else "TARGET NOT MET: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
