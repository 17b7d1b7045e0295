"""Packshot throughput: ``render_packshot`` against the plain Pillow loop a user would write.

Run: ``.venv/bin/python benchmarks/packshots.py [--n 1000] [--size 1024] [--workers 2]
[--pool thread|process]``

Setup (not timed): ``n`` cutouts, RGBA PNGs of ``size`` px drawn by
``engine.synthetic.make_cutout`` (bottle, box, mug or lamp; random colour, shading,
position and proportions, a light grain like a real photo's; exact anti-aliased
alpha, black invisible pixels), written to a temporary folder by a process pool.

Timed: every cutout rendered as a JPEG packshot for two channels, ``amazon_main``
(2000x2000, fill 0.88) and ``shopify`` (2048x2048, fill 0.85): 2n images per side.
Each job reads its cutout file and produces the JPEG bytes (kept in memory, not
written, the same for both sides).

* ours: ``render_packshot(path.read_bytes(), preset)``: decode, product box (alpha >
  8/255), crop, premultiplied resample (OpenCV bicubic up / area down), composite,
  JPEG at the preset's quality (90) by OpenCV's libjpeg-turbo with the sRGB ICC
  profile inserted, max_bytes checked;
* baseline: open + ``convert("RGBA")``, ``getbbox`` of the alpha channel, crop,
  ``resize(..., LANCZOS)`` to the same fill (Pillow premultiplies RGBA for it;
  ``--baseline-filter bicubic`` for Pillow's default, faster filter instead),
  ``paste`` with the alpha as mask on a white canvas, ``save`` JPEG quality 90 (the
  same libjpeg-turbo settings): the same essential work without the extras.

Parallelism, the same for both sides: a pool of ``--workers`` (default 2, this
machine's cores) fed one image per task. Default ``process``: Pillow's JPEG encoder
(writing to memory) and PNG decoder hold the GIL for much of their work, so in
threads the baseline's encodes would queue behind each other while ours (OpenCV,
GIL-free) would not; a process pool gives both sides both cores, at the price of a
second copy of the libraries (about 100 MB per worker). Inputs and outputs cross
as a path and a byte count. ``--pool thread`` runs the same jobs in threads (it
favours ours). After a warm-up of a few images per side, the images go in runs of
50, ours and the baseline taking turns run by run (alternating which goes first),
and each side's wall times are summed: the machine is shared with other jobs (the
1-minute load average is printed), and a burst of their load then hits both sides
alike instead of one whole phase.

Printed last, one line: ``PACKSHOTS n=... images_per_s=... baseline_images_per_s=...
ratio=... peak_rss_mb=...`` with ratio = ours / baseline. Peak RSS, from
``resource.getrusage``: this process's ``ru_maxrss`` (RUSAGE_SELF) plus ``workers`` x
the largest child's (RUSAGE_CHILDREN: generation and render workers), an upper bound
of all processes at once. Details (per phase, a compliance spot-check of our
outputs) go to stderr. Targets: ratio >= 1.0, peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bria_dagster.engine.synthetic import make_cutout  # noqa: E402
from bria_dagster.packshot import (  # noqa: E402
    BUILTIN_PRESETS,
    ChannelPreset,
    check_packshot,
    render_packshot,
)

CHANNELS = ("amazon_main", "shopify")
CHUNK = 50  # images per timed run; the sides alternate run by run
WARMUP = 4
SPOT_CHECKS = 10


def _generate(job: tuple[int, int, str]) -> str:
    seed, size, folder = job
    path = Path(folder) / f"cutout_{seed:05d}.png"
    path.write_bytes(make_cutout(seed, (size, size)))
    return str(path)


def ours(path: str, preset: ChannelPreset) -> int:
    return len(render_packshot(Path(path).read_bytes(), preset).data)


BASELINE_FILTER = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
_baseline_filter = Image.Resampling.LANCZOS


def _set_baseline_filter(name: str) -> None:
    global _baseline_filter
    _baseline_filter = BASELINE_FILTER[name]


def baseline(path: str, preset: ChannelPreset) -> int:
    """What a user would write with Pillow alone."""
    width, height = preset.width, preset.height
    with Image.open(path) as opened:
        image = opened.convert("RGBA")
    box = image.getchannel("A").getbbox()
    product = image.crop(box)
    scale = preset.fill * min(width / product.width, height / product.height)
    size = (round(product.width * scale), round(product.height * scale))
    product = product.resize(size, _baseline_filter)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(product, ((width - size[0]) // 2, (height - size[1]) // 2), product)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=90)
    return len(buf.getvalue())


def _job(args: tuple[Callable[[str, ChannelPreset], int], str, ChannelPreset]) -> int:
    fn, path, preset = args
    return fn(path, preset)


def _run(
    pool: Executor, fn: Callable[[str, ChannelPreset], int], paths: list[str], preset
) -> tuple[float, int]:
    start = time.perf_counter()
    total = sum(pool.map(_job, [(fn, p, preset) for p in paths], chunksize=1))
    return time.perf_counter() - start, total


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of cutouts (default 1000)")
    parser.add_argument("--size", type=int, default=1024, help="cutout side in px")
    parser.add_argument("--workers", type=int, default=2, help="pool size (default 2)")
    parser.add_argument("--pool", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--baseline-filter",
        choices=sorted(BASELINE_FILTER),
        default="lanczos",
        help="the baseline's resize filter (default lanczos, Pillow's best)",
    )
    args = parser.parse_args()
    _set_baseline_filter(args.baseline_filter)

    log = sys.stderr
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=log)
    with tempfile.TemporaryDirectory(prefix="packshots_") as folder:
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.workers) as gen:
            jobs = [(seed, args.size, folder) for seed in range(args.n)]
            paths = list(gen.map(_generate, jobs, chunksize=8))
        mb = sum(Path(p).stat().st_size for p in paths) / 1e6
        print(
            f"generated {args.n} cutouts ({args.size}px, {mb:.0f} MB of PNG) in "
            f"{time.perf_counter() - start:.1f} s (not timed)",
            file=log,
        )

        walls = {"ours": 0.0, "baseline": 0.0}
        output_bytes = {"ours": 0, "baseline": 0}
        if args.pool == "thread":
            pool: Executor = ThreadPoolExecutor(max_workers=args.workers)
        else:
            pool = ProcessPoolExecutor(
                max_workers=args.workers,
                initializer=_set_baseline_filter,
                initargs=(args.baseline_filter,),
            )
        with pool:
            for name in CHANNELS:  # warm-up: imports, OpenCV and LittleCMS initialisation
                for fn in (ours, baseline):
                    _run(pool, fn, paths[:WARMUP], BUILTIN_PRESETS[name])
            turn = 0
            for name in CHANNELS:
                preset = BUILTIN_PRESETS[name]
                phase = {"ours": 0.0, "baseline": 0.0}
                for start in range(0, len(paths), CHUNK):
                    chunk = paths[start : start + CHUNK]
                    sides = [("ours", ours), ("baseline", baseline)]
                    for side, fn in sides if turn % 2 == 0 else sides[::-1]:
                        wall, total = _run(pool, fn, chunk, preset)
                        phase[side] += wall
                        output_bytes[side] += total
                    turn += 1
                for side, wall in phase.items():
                    walls[side] += wall
                    print(
                        f"{name:<12} {side:<8} {args.n / wall:7.1f} images/s ({wall:.1f} s)",
                        file=log,
                    )

        print(
            "mean JPEG size: "
            + ", ".join(
                f"{side} {b / (2 * args.n) / 1e3:.0f} kB" for side, b in output_bytes.items()
            ),
            file=log,
        )
        for name in CHANNELS:  # spot-check: our packshots pass the channel's own checks
            preset = BUILTIN_PRESETS[name]
            failures = 0
            for path in paths[:SPOT_CHECKS]:
                cutout = Path(path).read_bytes()
                failures += bool(check_packshot(render_packshot(cutout, preset).data, preset))
            print(f"{name}: {SPOT_CHECKS - failures}/{SPOT_CHECKS} compliant", file=log)

    images = 2 * args.n
    ours_rate = images / walls["ours"]
    base_rate = images / walls["baseline"]
    self_mb, children_mb = _rss_mb(resource.RUSAGE_SELF), _rss_mb(resource.RUSAGE_CHILDREN)
    peak_mb = self_mb + args.workers * children_mb
    print(
        f"pool: {args.workers} x {args.pool}; peak RSS this process {self_mb:.0f} MB, largest "
        f"child {children_mb:.0f} MB; load average at end: {os.getloadavg()[0]:.2f}",
        file=log,
    )
    print(
        f"PACKSHOTS n={args.n} images_per_s={ours_rate:.1f} "
        f"baseline_images_per_s={base_rate:.1f} ratio={ours_rate / base_rate:.2f} "
        f"peak_rss_mb={peak_mb:.0f}"
    )


if __name__ == "__main__":
    main()
