"""Benchmark: COCO uncompressed RLE of full-size masks (issue #15: 2048² <= 5 ms).

Times :func:`imaging.rle.encode_coco_rle` against the implementation it replaced (a
Fortran-order ravel, an int8 diff over the whole image and ``.tolist()``, kept here as
``old``) and pycocotools' C encoder (compressed RLE, for scale), in the same run, on one
core, for several kinds of mask at 2048x2048 and 2500x3000. Also times the SIIM encoder and
both decoders, old and new. Every case first checks that old and new give identical output.

    uv run python -m benchmarks.bench_rle --out benchmarks/results/rle.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pycocotools.mask as coco_mask  # type: ignore[import-untyped]

from benchmarks import rle_before
from imaging.geometry import LetterboxGeometry
from imaging.rle import (
    decode_coco_rle,
    decode_siim_rle,
    encode_coco_rle,
    encode_siim_rle,
)
from imaging.saliency import explain

SIZES = ((2048, 2048), (2500, 3000))
COMMAND = "uv run python -m benchmarks.bench_rle --out benchmarks/results/rle.json"


def pycocotools_encode(mask: npt.NDArray[Any]) -> Any:
    return coco_mask.encode(np.asfortranarray(mask.view(np.uint8)))


# ----------------------------------------------------------------------------- masks
def masks(rows: int, columns: int) -> dict[str, npt.NDArray[np.bool_]]:
    rng = np.random.default_rng(15)
    out: dict[str, npt.NDArray[np.bool_]] = {
        "empty": np.zeros((rows, columns), dtype=bool),
        "full": np.ones((rows, columns), dtype=bool),
    }
    blob = np.zeros((rows, columns), dtype=np.uint8)
    cv2.ellipse(blob, (columns // 3, rows // 3), (columns // 8, rows // 6), 20, 0, 360, 1, -1)
    out["one blob"] = blob.astype(bool)
    small = np.zeros((rows, columns), dtype=bool)
    for y, x in zip(rng.integers(0, rows, 300), rng.integers(0, columns, 300), strict=True):
        small[y : y + 9, x : x + 7] = True
    out["300 small blobs"] = small
    out["noise 1%"] = rng.random((rows, columns)) < 0.01
    out["noise 50%"] = rng.random((rows, columns)) < 0.5
    # Saliency as the service makes it: a 32x32 CAM (R=1024) resampled onto the image and
    # thresholded at half its peak. One focal CAM (a lesion) and one diffuse CAM.
    geometry = LetterboxGeometry.fit(rows, columns, 1024)
    grid = np.mgrid[:32, :32].astype(np.float32)
    focal = np.exp(-((grid[0] - 11) ** 2 + (grid[1] - 20) ** 2) / 8.0)
    focal += 0.6 * np.exp(-((grid[0] - 22) ** 2 + (grid[1] - 9) ** 2) / 4.0)
    out["saliency focal"] = explain(focal, geometry).mask
    diffuse = cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (0, 0), 2)
    out["saliency diffuse"] = explain(diffuse, geometry).mask
    return out


# --------------------------------------------------------------------------- timing
def pin_to_one_core() -> str:
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    return f"cpu {cpu}"


def median_ms(fn: Callable[[], object], budget_s: float, min_reps: int) -> float:
    fn()  # warm-up
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_reps or (time.perf_counter() < deadline and len(samples) < 300):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def run(budget_s: float, min_reps: int) -> dict[str, Any]:
    where = pin_to_one_core()
    results: list[dict[str, Any]] = []
    for rows, columns in SIZES:
        for kind, mask in masks(rows, columns).items():
            rle = encode_coco_rle(mask)
            siim = encode_siim_rle(mask)
            # Identical output first (the unit tests check this on many more masks).
            assert rle == rle_before.encode_coco(mask), kind
            assert siim == rle_before.encode_siim(mask), kind
            assert bytes(coco_mask.frPyObjects(dict(rle), rows, columns)["counts"]) == bytes(
                pycocotools_encode(mask)["counts"]
            ), kind
            assert np.array_equal(decode_coco_rle(rle), mask), kind
            assert np.array_equal(decode_siim_rle(siim, rows, columns), mask), kind
            reps = min_reps if kind != "noise 50%" else 3
            functions: dict[str, Callable[[], object]] = {
                "coco_old": partial(rle_before.encode_coco, mask),
                "coco_new": partial(encode_coco_rle, mask),
                "pycocotools": partial(pycocotools_encode, mask),
                "siim_old": partial(rle_before.encode_siim, mask),
                "siim_new": partial(encode_siim_rle, mask),
                "decode_coco_old": partial(rle_before.decode_coco, rle),
                "decode_coco_new": partial(decode_coco_rle, rle),
                "decode_siim_old": partial(rle_before.decode_siim, siim, rows, columns),
                "decode_siim_new": partial(decode_siim_rle, siim, rows, columns),
            }
            t = {name: median_ms(fn, budget_s, reps) for name, fn in functions.items()}
            row = {
                "size": f"{rows}x{columns}",
                "mask": kind,
                "foreground": round(float(mask.mean()), 4),
                "counts": len(rle["counts"]),
                **{f"{k}_ms": round(v, 2) for k, v in t.items()},
                "coco_speedup": round(t["coco_old"] / t["coco_new"], 1),
            }
            results.append(row)
            print(_format_row(row), flush=True)
    return {
        "benchmark": "COCO/SIIM RLE encode and decode, old vs new, one core",
        "command": COMMAND,
        "where": where,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "goal": "encode_coco_rle of a 2048x2048 mask <= 5 ms (issue #15)",
        "results": results,
    }


HEADER = (
    "| image | mask | fg | counts | COCO old ms | COCO new ms | x | pycocotools ms "
    "| SIIM old ms | SIIM new ms | dec COCO old/new ms | dec SIIM old/new ms |"
)


def _format_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['size']} | {row['mask']} | {row['foreground']} | {row['counts']} | "
        f"{row['coco_old_ms']} | {row['coco_new_ms']} | {row['coco_speedup']} | "
        f"{row['pycocotools_ms']} | {row['siim_old_ms']} | {row['siim_new_ms']} | "
        f"{row['decode_coco_old_ms']} / {row['decode_coco_new_ms']} | "
        f"{row['decode_siim_old_ms']} / {row['decode_siim_new_ms']} |"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` ({report['where']}, {report['machine']['cpu_count']} CPUs, "
        f"numpy {report['machine']['numpy']}); medians. Goal: {report['goal']}.",
        "",
        HEADER,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_format_row(r) for r in report["results"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rle.json"))
    parser.add_argument("--budget-s", type=float, default=0.5, help="time per function and case")
    parser.add_argument("--min-reps", type=int, default=10)
    args = parser.parse_args()
    report = run(args.budget_s, args.min_reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
