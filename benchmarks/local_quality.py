"""Quality benchmark of the embedded classical matte on two synthetic sets with exact alpha.

Run: ``.venv/bin/python benchmarks/local_quality.py [--set both|tuning|heldout]
[--seeds N] [--heldout-per-kind N] [--grabcut auto|always|never]``

Two generators that share no code path:

* TUNING set, ``bria_dagster.engine.synthetic`` (OpenCV-drawn bottles, boxes, mugs
  and lamps; 512 px), with its two harder kinds ``vignette`` (a strong off-centre
  radial fall-off, grey products) and ``bokeh`` (out-of-focus discs). The method and
  its parameters (``MatteConfig`` defaults, including when GrabCut runs) were chosen
  looking only at this generator: seeds ``0 .. 39`` and, for ``vignette``, also
  ``5000 .. 5011``. Its seeds ``100_000 ..`` are reported too, as last turn did.
* HELD-OUT set, ``bria_dagster.engine.heldout`` (Material Design Icons rendered by
  resvg in varied colours, with holes and thin parts; vignetted gradients, coloured
  paper, wood, marble, fabric and bokeh; soft contact shadows; JPEG q85-95; 1024 px;
  needs the ``heldout`` extra). Never tuned on: it was written and checked by eye
  (a sheet of photos and alphas) before any score was taken. How it has been used,
  all of it: only this benchmark's per-kind table, never its images or per-photo
  scores, four times: (1) before GrabCut, (2) after GrabCut (``--grabcut never``
  vs the default), (3) after the refit and the out-of-focus path. The hard tuning
  kinds were added because run (2)'s table (and the issue) named the weak kinds,
  gray gradient with vignette and bokeh: knowledge at the level of a kind, which
  the README states with the figures. Run (3) showed marble falling (0.98 to 0.84);
  nothing was changed for it. (4) A silhouette hint for GrabCut on white-on-white
  (the inside of clear outlines as probable foreground), chosen on the tuning set
  (low_contrast 0.912 to 0.938, no other kind worse): held-out low_contrast 0.909 to
  0.910 and 40 ms more per photo, so it was not kept.
  Targets: white_studio, gray_gradient, colored IoU >= 0.97 and MAE <= 0.02 each;
  low_contrast IoU >= 0.93; textured IoU >= 0.90 (also shown per texture).

Metrics per kind: IoU of ``alpha >= 0.5`` against ``gt >= 0.5`` (mean over images),
worst IoU, and alpha MAE (mean absolute error over all pixels, mean over images).

Speed (``--speed-repeats``, 0 to skip): median wall time of ``remove_background``
on 1024x1024 photos; see ``local_speed.py`` for the end-to-end figures.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from dataclasses import replace

import numpy as np
from PIL import Image

from bria_dagster.engine.matte import MatteConfig, remove_background
from bria_dagster.engine.synthetic import CATEGORIES, HARD_CATEGORIES, make_product_photo

TUNING_SEEDS_START = 0
HELD_OUT_SEEDS_START = 100_000  # disjoint from tuning; never used to choose parameters
TARGET_CATEGORIES = ("white_studio", "gray_gradient", "colored")
TARGET_IOU, TARGET_MAE = 0.97, 0.02
HELDOUT_IOU = {"low_contrast": 0.93, "textured": 0.90}  # plus the studio targets above
CONFIG = MatteConfig()


def _decode(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))


def evaluate(category: str, seeds: range, size: int) -> tuple[float, float, float, list[float]]:
    """Mean IoU, mean MAE, worst IoU and per-image ms for one category and split."""
    ious, maes, times = [], [], []
    for seed in seeds:
        jpg, gt = make_product_photo(category, seed, (size, size))
        rgb = _decode(jpg)
        t0 = time.perf_counter()
        alpha = remove_background(rgb, CONFIG)
        times.append((time.perf_counter() - t0) * 1000)
        pred, truth = alpha >= 0.5, gt >= 0.5
        union = (pred | truth).sum()
        ious.append(float((pred & truth).sum() / union) if union else 1.0)
        maes.append(float(np.abs(alpha - gt).mean()))
    return float(np.mean(ious)), float(np.mean(maes)), float(np.min(ious)), times


def evaluate_heldout(kind: str, count: int, size: int) -> list[tuple[str, float, float, float]]:
    """(texture, IoU, MAE, ms) per held-out photo of one kind."""
    from bria_dagster.engine.heldout import make_heldout_photo

    rows = []
    for seed in range(count):
        jpg, gt, info = make_heldout_photo(kind, seed, size)
        rgb = _decode(jpg)
        t0 = time.perf_counter()
        alpha = remove_background(rgb, CONFIG)
        ms = (time.perf_counter() - t0) * 1000
        pred, truth = alpha >= 0.5, gt >= 0.5
        union = (pred | truth).sum()
        iou = float((pred & truth).sum() / union) if union else 1.0
        rows.append((info["texture"], iou, float(np.abs(alpha - gt).mean()), ms))
    return rows


def heldout_report(count: int, size: int) -> bool:
    from bria_dagster.engine.heldout import KINDS, TEXTURES

    print(f"\nHELD-OUT generator (bria_dagster.engine.heldout): {count} photos per kind "
          f"at {size}px, seeds 0..{count - 1}, never tuned on")  # fmt: skip
    print(f"{'kind':<22}{'n':>4}{'IoU':>8}{'min IoU':>9}{'MAE':>9}   target")
    ok = True
    times: list[float] = []
    for kind in KINDS:
        rows = evaluate_heldout(kind, count, size)
        times += [r[3] for r in rows]
        iou = float(np.mean([r[1] for r in rows]))
        mae = float(np.mean([r[2] for r in rows]))
        worst = min(r[1] for r in rows)
        if kind in TARGET_CATEGORIES:
            met = iou >= TARGET_IOU and mae <= TARGET_MAE
            target = f"IoU >= {TARGET_IOU}, MAE <= {TARGET_MAE}"
        else:
            met = iou >= HELDOUT_IOU[kind]
            target = f"IoU >= {HELDOUT_IOU[kind]}"
        ok &= met
        print(f"{kind:<22}{len(rows):>4}{iou:>8.3f}{worst:>9.3f}{mae:>9.4f}   "
              f"{'met' if met else 'MISSED'} ({target})")  # fmt: skip
        if kind == "textured":
            for texture in TEXTURES:
                sub = [r for r in rows if r[0] == texture]
                if sub:
                    s_iou = np.mean([r[1] for r in sub])
                    s_mae = np.mean([r[2] for r in sub])
                    s_min = min(r[1] for r in sub)
                    print(f"  {texture:<20}{len(sub):>4}{s_iou:>8.3f}{s_min:>9.3f}{s_mae:>9.4f}")
    print(f"median ms per held-out photo at {size}px: {statistics.median(times):.1f}")
    return ok


def speed_at(size: int, repeats: int) -> tuple[float, float]:
    """Median wall ms and median CPU ms (all threads) of remove_background at size x size.

    CPU time is shown too because wall time on a shared machine includes waiting for
    other processes; on an idle 2-core machine wall time is at most the CPU time.
    """
    images = [
        _decode(make_product_photo(CATEGORIES[i % len(CATEGORIES)], 900_000 + i, (size, size))[0])
        for i in range(repeats)
    ]
    remove_background(images[0], CONFIG)  # warm-up (OpenCV thread pool, allocations)
    wall, cpu = [], []
    for rgb in images:
        t0, c0 = time.perf_counter(), time.process_time()
        remove_background(rgb, CONFIG)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    global CONFIG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("both", "tuning", "heldout"), default="both")
    parser.add_argument("--seeds", type=int, default=20, help="tuning-set images per category")
    parser.add_argument("--size", type=int, default=512, help="tuning-set image side")
    parser.add_argument("--heldout-per-kind", type=int, default=30)
    parser.add_argument("--heldout-size", type=int, default=1024)
    parser.add_argument("--speed-repeats", type=int, default=15, help="0 skips the speed part")
    parser.add_argument("--grabcut", choices=("auto", "always", "never"), default="auto",
                        help="MatteConfig.grabcut (never = the engine before GrabCut)")  # fmt: skip
    args = parser.parse_args()
    CONFIG = replace(MatteConfig(), grabcut=args.grabcut)
    print(f"MatteConfig.grabcut = {args.grabcut!r}")

    ok = True
    if args.set in ("both", "tuning"):
        ok &= tuning_report(args.seeds, args.size)
    if args.set in ("both", "heldout"):
        ok &= heldout_report(args.heldout_per_kind, args.heldout_size)
    if args.speed_repeats:
        wall, cpu = speed_at(1024, args.speed_repeats)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"\nmedian ms per remove_background at 1024px: {wall:.1f} wall, {cpu:.1f} CPU "
            f"({os.cpu_count()} cores, load average {load:.1f})"
        )
    return 0 if ok else 1


def tuning_report(count: int, size: int) -> bool:
    splits = {
        "TUNING seeds": range(TUNING_SEEDS_START, TUNING_SEEDS_START + count),
        "its HELD-OUT seeds": range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + count),
    }
    print(f"\nTUNING generator (bria_dagster.engine.synthetic): {count} JPEG photos per "
          f"category per split at {size}x{size}")  # fmt: skip
    ok = True
    all_times: list[float] = []
    for name, seeds in splits.items():
        print(f"\n{name} ({seeds.start}..{seeds.stop - 1})")
        print(f"{'category':<14}{'IoU':>8}{'min IoU':>9}{'MAE':>9}   target")
        for category in CATEGORIES + HARD_CATEGORIES:
            iou, mae, worst, times = evaluate(category, seeds, size)
            all_times += times
            if category in TARGET_CATEGORIES:
                met = iou >= TARGET_IOU and mae <= TARGET_MAE
                if name != "TUNING seeds":
                    ok &= met
                verdict = "met" if met else "MISSED"
            else:
                verdict = "(best effort)"
            print(f"{category:<14}{iou:>8.3f}{worst:>9.3f}{mae:>9.4f}   {verdict}")
    print(f"median ms per image at {size}px: {statistics.median(all_times):.1f}")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
