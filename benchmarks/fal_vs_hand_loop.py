"""bria-dagster against the loop a user would write by hand, on the fal protocol test server.

    .venv/bin/python benchmarks/fal_vs_hand_loop.py [--sizes 50 400 2000] [--latency 0.5]
        [--slots 32] [--repeat 5] [--cpu-per-request-ms 3] [--before CHECKOUT]

The hand-written loop: plain ``fal_client.AsyncClient`` (submit, then ``handle.get()``),
one ``asyncio.Semaphore(slots)``, and each product carried remove -> replace -> expand
(two aspect ratios) as soon as its previous call returns, every result downloaded.
The pipeline: the same products as a catalog batch, materialized by Dagster
(``catalog_batch`` and the streaming steps) with ``max_concurrency=slots``. (Its
expansion to 1:1 of a square photo is a no-op, recorded and not sent: 3 calls per
product to the hand loop's 4.)

Both run in fresh processes against one server process (0.5 s latency, ``slots`` jobs
in progress per key) that spends ``--cpu-per-request-ms`` of CPU on every HTTP request,
as TLS and JSON handling do on a real server, on the same cores as the clients. With
``--before CHECKOUT`` a third side runs that checkout's pipeline (same script, its
package first on ``PYTHONPATH``) on the same server and batches. Per size it prints::

    VS-HAND n=... ideal_s=... hand_ratio=... ours_ratio=... first_product_s=...
        requests_per_call=... (hand ...) cpu_ms_per_call=... (hand ...) (before: ...)

ideal = calls x latency / slots (4 calls per product); a ratio is wall / ideal; sizes
under 1,000 run ``--repeat`` times each (the sides alternating, fresh storage every
time) and print the median of each side, since their walls are a few seconds. The
hand loop's wall is the whole loop; ours is the steps' Dagster step (the fal work;
``catalog_batch`` fetched the sources before it), with the whole materialization's
wall beside it. ``first_product_s`` (ours; the hand loop's beside it) is the time until
the first product has all its outputs stored. Calls (submissions) and HTTP requests
are counted at the server; client CPU per call is the client process's CPU over the
whole run (for ours the whole materialization: catalog ingest, Dagster events, checks,
metadata) divided by its calls. Targets: ours_ratio <= hand_ratio at every size and
<= 1.1 at 2,000; at most 4 HTTP requests per call; at most 12 ms of client CPU per
call at 2,000.
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
TARGET_REQUESTS_PER_CALL = 4.0
TARGET_CPU_MS_AT_2000 = 12.0
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
        async with httpx.AsyncClient(timeout=60) as http:

            async def call(endpoint: str, arguments: dict[str, Any]) -> tuple[dict, bytes]:
                async with slots_sem:
                    handle = await client.submit(endpoint, arguments=arguments)
                    result = await handle.get()
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
        return {"wall_s": wall, "first_product_s": min(finished) - t0, "cpu_s": cpu}

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
    ok = int((expansions["status"] == "ok").sum())
    return {
        "wall_s": times["STEP_SUCCESS"] - start,
        "total_wall_s": total_wall,
        "first_product_s": first,
        "ok_expansions": ok,
        "cpu_s": cpu,
    }


# ----------------------------------------------------------------------------- parent


def run_side(
    server: Any, tmp: Path, n: int, slots: int, side: str, label: str, before: str | None
) -> dict[str, Any]:
    """One client run on fresh storage, with the server's counts of what it sent."""
    folder = write_catalog(tmp / label, n)
    env = {"PYTHONPATH": before} if side == "before" else None
    server.reset()
    kind = "hand" if side == "hand" else "ours"
    result = server.run_client(__file__, label, [kind, str(folder), str(slots)], env=env)
    stats = server.stats()
    calls = stats["submissions"]
    result.update(
        calls=calls,
        requests_per_call=sum(stats["requests_by_op"].values()) / max(calls, 1),
        cpu_ms_per_call=1000 * result["cpu_s"] / max(calls, 1),
        duplicates=stats["duplicate_submissions"],
        peak_in_progress=stats["max_in_progress_seen"],
    )
    return result


def describe(name: str, run: dict[str, Any]) -> str:
    walls = f"wall {run['wall_s']:.2f}s"
    if "total_wall_s" in run:
        walls = f"steps {run['wall_s']:.2f}s (whole materialization {run['total_wall_s']:.2f}s)"
    return (
        f"  {name}: {walls}, first product {run['first_product_s']:.2f}s, {run['calls']} calls, "
        f"{run['requests_per_call']:.2f} HTTP requests/call, client CPU "
        f"{run['cpu_ms_per_call']:.2f} ms/call; server: duplicates {run['duplicates']}, "
        f"peak in progress {run['peak_in_progress']}"
    )


def main() -> int:
    from bria_dagster.testing import FalServerProcess  # the parent's only, not the clients'

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 400, 2000])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument(
        "--cpu-per-request-ms",
        type=float,
        default=3.0,
        help="CPU the server spends on each HTTP request, as TLS and JSON handling do on a "
        "real one; it shares the machine's cores with the clients",
    )
    parser.add_argument(
        "--before",
        metavar="CHECKOUT",
        help="a checkout of bria-dagster (its root folder) whose pipeline runs the same "
        "batches on the same server, printed beside ours as the before figures",
    )
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
        f"fal vs hand loop: latency {args.latency}s, {args.slots} in progress per key, server "
        f"CPU {args.cpu_per_request_ms:g} ms per HTTP request; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f} at start"
    )
    sides = ["hand", "ours"] + (["before"] if args.before else [])
    before = str(Path(args.before).resolve()) if args.before else None
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bria-vs-hand-") as tmp:
        server = FalServerProcess(
            Path(tmp),
            latency=args.latency,
            max_in_progress=args.slots,
            seed=11,
            cpu_per_request_ms=args.cpu_per_request_ms,
        )
        try:
            for n in args.sizes:
                ideal = n * CALLS_PER_PRODUCT * args.latency / args.slots
                reps = args.repeat if n < REPEAT_BELOW else 1
                runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
                for rep in range(reps):  # the sides alternate, each on fresh storage
                    for side in sides:
                        label = f"{side}-{n}-{rep}"
                        run = run_side(server, Path(tmp), n, args.slots, side, label, before)
                        runs[side].append(run)
                    if reps > 1:
                        walls = ", ".join(f"{s} {runs[s][-1]['wall_s']:.2f}s" for s in sides)
                        print(f"  n={n} repetition {rep + 1}/{reps}: {walls}", flush=True)
                # Ratios are medians of each side's walls; the lines below are the median run.
                ratio = {s: statistics.median(r["wall_s"] for r in runs[s]) / ideal for s in sides}
                median = {s: sorted(runs[s], key=lambda r: r["wall_s"])[reps // 2] for s in sides}
                cpu = {s: statistics.median(r["cpu_ms_per_call"] for r in runs[s]) for s in sides}
                per_call = {
                    s: statistics.median(r["requests_per_call"] for r in runs[s]) for s in sides
                }
                was = (
                    f" (before: ours_ratio={ratio['before']:.3f} requests_per_call="
                    f"{per_call['before']:.2f} cpu_ms_per_call={cpu['before']:.2f})"
                    if before
                    else ""
                )
                print(
                    f"VS-HAND n={n} ideal_s={ideal:.2f} hand_ratio={ratio['hand']:.3f} "
                    f"ours_ratio={ratio['ours']:.3f} first_product_s="
                    f"{median['ours']['first_product_s']:.2f} requests_per_call="
                    f"{per_call['ours']:.2f} (hand {per_call['hand']:.2f}) cpu_ms_per_call="
                    f"{cpu['ours']:.2f} (hand {cpu['hand']:.2f}){was}",
                    flush=True,
                )
                for side in sides:
                    print(describe(side, median[side]), flush=True)
                if ratio["ours"] > ratio["hand"]:
                    missed.append(f"n={n}: ours {ratio['ours']:.3f} > hand {ratio['hand']:.3f}")
                if per_call["ours"] > TARGET_REQUESTS_PER_CALL:
                    missed.append(f"n={n}: {per_call['ours']:.2f} requests per call")
                if n >= 2000 and ratio["ours"] > TARGET_AT_2000:
                    missed.append(f"n={n}: ours {ratio['ours']:.3f} > {TARGET_AT_2000}")
                if n >= 2000 and cpu["ours"] > TARGET_CPU_MS_AT_2000:
                    missed.append(f"n={n}: client CPU {cpu['ours']:.2f} ms per call")
        finally:
            server.stop()
    print("targets met" if not missed else "TARGET NOT MET: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
