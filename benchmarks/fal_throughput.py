"""FalBackend throughput against the fal protocol test server (bria_dagster.testing.fal_server).

    .venv/bin/python benchmarks/fal_throughput.py [--n 1000] [--latency 0.5] [--slots 32]
        [--concurrency 64] [--baseline-n 40] [--runs 1] [--skip-faults]

The server runs in its own process (standalone mode), so its CPU is not charged to
the client. Every measured client is a fresh subprocess whose environment carries
``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` / ``SSL_CERT_FILE`` before fal_client is
imported. Figures printed:

1. clean run: N remove requests through ``FalBackend`` + ``run_batch``; wall time vs
   the ideal N x latency / slots (target <= 1.15x) and client CPU ms per request;
2. baseline: the quick-start way, sequential ``fal_client.subscribe`` (sync API) on a
   few requests, extrapolated to N; the speedup of (1) over it;
3. faults: the same batch with 10% 429, 5% 5xx, 2% dropped connections: completions,
   duplicate paid submissions (must be 0), retries seen by the client and the server.

Nothing is faked: a missed target prints ``TARGET NOT MET`` with the true figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.15
ENDPOINT = "fal-ai/bria/background/remove"
FAULTS = {"rate_429": 0.1, "rate_5xx": 0.05, "rate_drop": 0.02}
NO_FAULTS = {"rate_429": 0.0, "rate_5xx": 0.0, "rate_drop": 0.0}


# ----------------------------------------------------------------------------- client side


def _inputs(n: int, offset: int) -> list[bytes]:
    from bria_dagster.engine.synthetic import CATEGORIES, make_product_photo

    cats = sorted(CATEGORIES)
    return [make_product_photo(cats[i % len(cats)], offset + i, (64, 64))[0] for i in range(n)]


def _run_queue_wait_s() -> float:
    """Seconds the client's event-loop thread was runnable but waited for a CPU (Linux)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def client_batch(n: int, concurrency: int, offset: int) -> dict[str, Any]:
    """N remove requests through FalBackend + run_batch (runs in the client subprocess)."""
    import asyncio

    from bria_dagster.client.backends.fal import FalBackend
    from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
    from bria_dagster.client.runner import run_batch

    photos = _inputs(n, offset)
    items = [(i, RemoveBackgroundRequest(image_url=data)) for i, data in enumerate(photos)]

    async def go() -> dict[str, Any]:
        extra = {}
        if os.environ.get("BENCH_MAX_CONNECTIONS"):  # for tuning runs only
            extra["max_connections"] = int(os.environ["BENCH_MAX_CONNECTIONS"])
        backend = FalBackend(**extra)
        ok = failed = retries = attempts = 0
        errors: list[str] = []
        try:
            queued0 = _run_queue_wait_s()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            async for outcome in run_batch(backend, items, max_concurrency=concurrency):
                if outcome.ok and outcome.result is not None:
                    ok += 1
                    retries += len(outcome.result.retries)
                    attempts += outcome.result.attempts
                else:
                    failed += 1
                    errors.append(f"{outcome.error_class}: {outcome.error_message}"[:300])
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            queued = _run_queue_wait_s() - queued0
        finally:
            await backend.aclose()
        return {
            "n": n,
            "ok": ok,
            "failed": failed,
            "wall_s": wall,
            "cpu_s": cpu,
            "run_queue_s": queued,
            "retries": retries,
            "attempts": attempts,
            "errors": errors[:5],
        }

    return asyncio.run(go())


def client_baseline(n: int, offset: int) -> dict[str, Any]:
    """The seed's quick-start way: ``fal_client.subscribe`` (sync), one after another."""
    import fal_client

    from bria_dagster.client.images import to_data_uri

    photos = _inputs(n, offset)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = 0
    for data in photos:
        arguments = {"image_url": to_data_uri(data, "image/jpeg")}
        result = fal_client.subscribe(ENDPOINT, arguments=arguments)
        ok += bool(result.get("image", {}).get("url"))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"n": n, "ok": ok, "wall_s": wall, "cpu_s": cpu}


# ----------------------------------------------------------------------------- parent side


def main() -> int:
    from bria_dagster.testing import FalServerProcess  # the parent's only, not the clients'

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--slots", type=int, default=32, help="server: in progress per key")
    parser.add_argument("--concurrency", type=int, default=64, help="run_batch max_concurrency")
    parser.add_argument("--baseline-n", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3, help="clean runs (median reported)")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client:  # we are a measured client subprocess
        kind, *rest = args.client
        if kind == "batch":
            result = client_batch(int(rest[0]), int(rest[1]), int(rest[2]))
        else:
            result = client_baseline(int(rest[0]), int(rest[1]))
        print(json.dumps(result), flush=True)
        return 0

    n, lat, slots = args.n, args.latency, args.slots
    ideal = n * lat / slots
    print(f"fal throughput: {n} x {ENDPOINT}, latency {lat}s, {slots} in progress per key")
    print(f"ideal wall time N x latency / slots = {ideal:.2f}s (target <= {TARGET_RATIO}x)")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start "
        "(other processes compete with the client and the server for the CPUs)"
    )
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bria-fal-bench-") as tmp:
        server = FalServerProcess(Path(tmp), latency=lat, max_in_progress=slots, seed=7)
        try:
            runs = []
            for run in range(args.runs):
                server.configure(**NO_FAULTS)
                server.reset()
                key = f"bench-clean-{run}"
                server_cpu0 = server.cpu_seconds()
                res = server.run_client(
                    __file__, key, ["batch", str(n), str(args.concurrency), str(run * n)]
                )
                stats = server.stats()
                res["server_cpu_s"] = server.cpu_seconds() - server_cpu0
                res["calls"] = {
                    k: stats.get(k, 0)  # stream_calls: absent on a server from before streams
                    for k in ("status_calls", "stream_calls", "result_calls", "file_gets")
                }
                res["max_in_progress"] = stats["max_in_progress_by_key"].get(key, 0)
                runs.append(res)
                print(
                    f"  clean run {run + 1}: {res['ok']}/{n} ok in {res['wall_s']:.2f}s "
                    f"= {res['wall_s'] / ideal:.3f}x ideal, {n / res['wall_s']:.1f} jobs/s, "
                    f"client CPU {1000 * res['cpu_s'] / n:.2f} ms/request; per job: "
                    f"{res['calls']['status_calls'] / n:.2f} status, "
                    f"{res['calls']['stream_calls'] / n:.2f} status streams, "
                    f"{res['calls']['result_calls'] / n:.2f} result, "
                    f"{res['calls']['file_gets'] / n:.2f} file GETs; "
                    f"peak in progress {res['max_in_progress']}; "
                    f"client used {res['cpu_s'] / res['wall_s']:.2f} of a CPU and waited "
                    f"{res['run_queue_s']:.1f}s runnable for one (run queue), "
                    f"server CPU {res['server_cpu_s']:.1f}s",
                    flush=True,
                )
                if res["ok"] != n:
                    failures.append(f"clean run {run + 1}: {res['failed']} failed {res['errors']}")
            wall = statistics.median(r["wall_s"] for r in runs)
            cpu_ms = statistics.median(1000 * r["cpu_s"] / n for r in runs)
            ratio = wall / ideal
            verdict = "target met" if ratio <= TARGET_RATIO else "TARGET NOT MET"
            print(
                f"clean: median wall {wall:.2f}s over {len(runs)} run(s) = {ratio:.3f}x ideal "
                f"({verdict}, target <= {TARGET_RATIO}x); {n / wall:.1f} jobs/s; "
                f"client CPU {cpu_ms:.2f} ms/request (median)"
            )
            print(
                f"client capacity at {cpu_ms:.2f} ms CPU per request: "
                f"{1000 / cpu_ms:.0f} jobs/s on one uncontended CPU "
                f"({n / ideal:.0f} jobs/s needed for the ideal)"
            )
            if ratio > TARGET_RATIO:
                failures.append(f"wall time {ratio:.3f}x ideal > {TARGET_RATIO}x")

            if not args.skip_baseline:
                server.configure(**NO_FAULTS)
                server.reset()
                base = server.run_client(
                    __file__, "bench-baseline", ["baseline", str(args.baseline_n), "900000"]
                )
                per = base["wall_s"] / base["n"]
                extrapolated = per * n
                print(
                    f"baseline (sequential fal_client.subscribe, sync): "
                    f"{base['ok']}/{base['n']} ok in {base['wall_s']:.2f}s = {per:.3f}s/request "
                    f"-> {extrapolated:.0f}s for {n}; "
                    f"client CPU {1000 * base['cpu_s'] / base['n']:.2f} ms/request"
                )
                print(f"speedup vs baseline: {extrapolated / wall:.1f}x")

            if not args.skip_faults:
                server.configure(**FAULTS)
                server.reset()
                key = "bench-faults"
                res = server.run_client(
                    __file__, key, ["batch", str(n), str(args.concurrency), "500000"]
                )
                stats = server.stats()
                server.configure(**NO_FAULTS)
                dup = stats["duplicate_submissions"]
                faults = stats["faults"]
                print(
                    f"faults ({', '.join(f'{k}={v}' for k, v in FAULTS.items())}): "
                    f"{res['ok']}/{n} complete in {res['wall_s']:.2f}s "
                    f"({res['wall_s'] / ideal:.3f}x ideal), {res['failed']} failed; "
                    f"duplicate paid submissions {dup} (submissions {stats['submissions']}, "
                    f"distinct {stats['distinct_requests']}); client retries counted "
                    f"{res['retries']} (sum of len(result.retries)); server faults injected "
                    f"429={faults['429']} 5xx={faults['5xx']} drop={faults['drop']} "
                    f"(by op: {json.dumps(stats['faults_by_op'], sort_keys=True)})"
                )
                if res["ok"] != n:
                    failures.append(f"faults: {res['failed']} failed {res['errors']}")
                if dup:
                    failures.append(f"faults: {dup} duplicate paid submissions")
        finally:
            server.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if failures:
        print("NOT ALL TARGETS MET: " + "; ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
