"""Benchmark: DICOM bytes -> model input at 1024 (``read_dicom`` + ``preprocess``).

For a 2048x2048 and a 2500x3000 12-bit phantom, written in every transfer syntax the
writer supports, time decode + preprocess on **one core** (the process is pinned to one
CPU and OpenCV to one thread) with every installed decoder plugin. Reported: median and
p90 in ms, and the ratio to Explicit VR Little Endian measured in the same run (these
machines are shared and noisy, so ratios travel better than absolute numbers). JPEG 2000
syntaxes get one more row, ``reduced (pillow)``: decoded only to the wavelet level that
1024 needs (``read_dicom(min_side=1024)``, issue #15).

    uv run python -m benchmarks.bench_decode --out benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imaging.decoders import plugin_order
from imaging.dicom import read_dicom
from imaging.dicom_writer import WRITABLE_TRANSFER_SYNTAXES, write_dicom
from imaging.phantoms.dataset import generate_phantom
from imaging.preprocess import preprocess
from imaging.reduced import J2K_TRANSFER_SYNTAXES

BASELINE = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
SIZES = ((2048, 2048), (2500, 3000))
RESOLUTION = 1024
BITS_STORED = 12


def pin_to_one_core() -> str:
    """Pin this process to one CPU and OpenCV to one thread; say which CPU."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    return f"cpu {cpu}"


def phantom_bytes(rows: int, columns: int, syntax: str) -> bytes:
    phantom = generate_phantom(0, 0, "a", rows, columns, pneumothorax=True)
    stored = np.round(phantom.pixels * ((1 << BITS_STORED) - 1)).astype(np.uint16)
    if syntax == "1.2.840.10008.1.2.4.50":  # JPEG Baseline holds 8 bits only
        stored = (stored >> (BITS_STORED - 8)).astype(np.uint8)
        bits = 8
    else:
        bits = BITS_STORED
    buffer = io.BytesIO()
    write_dicom(buffer, stored, transfer_syntax=syntax, bits_stored=bits)
    return buffer.getvalue()


#: pseudo-plugin row: JPEG 2000 / HTJ2K decoded only to the wavelet level that 1024 needs
#: (``read_dicom(min_side=RESOLUTION)``, Pillow's OpenJPEG; see imaging/reduced.py and
#: benchmarks/bench_j2k_reduce.py for its tolerance and AUROC check)
REDUCED = "reduced (pillow)"


def time_once(data: bytes, plugin: str | None) -> float:
    start = time.perf_counter()
    if plugin == REDUCED:
        decoded = read_dicom(data, min_side=RESOLUTION)
        preprocess(decoded.pixels, RESOLUTION, grid=decoded.grid)
    else:
        decoded = read_dicom(data, decoding_plugin=plugin)
        preprocess(decoded.pixels, RESOLUTION)
    return (time.perf_counter() - start) * 1e3


def measure(data: bytes, plugin: str | None, budget_s: float, min_reps: int) -> list[float]:
    time_once(data, plugin)  # warm-up: imports, plugin initialisation, page faults
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_reps or (time.perf_counter() < deadline and len(samples) < 200):
        samples.append(time_once(data, plugin))
    return samples


def plugins_for(syntax: str) -> list[str]:
    """The installed plugins, plus the reduced decode for JPEG 2000 / HTJ2K."""
    extra = [REDUCED] if syntax in J2K_TRANSFER_SYNTAXES else []
    return plugin_order(syntax) + extra


def run(budget_s: float, min_reps: int) -> dict[str, Any]:
    where = pin_to_one_core()
    rows_out: list[dict[str, Any]] = []
    for rows, columns in SIZES:
        baseline_ms: float | None = None
        syntaxes = [BASELINE] + [s for s in WRITABLE_TRANSFER_SYNTAXES if s != BASELINE]
        for syntax in syntaxes:
            try:
                data = phantom_bytes(rows, columns, syntax)
            except ValueError as exc:  # e.g. a syntax that cannot hold 12 bits
                print(f"skip {syntax}: {exc}")
                continue
            for plugin in plugins_for(syntax):
                try:
                    samples = measure(data, plugin or None, budget_s, min_reps)
                except Exception as exc:
                    print(f"{rows}x{columns} {syntax} {plugin}: failed ({exc})")
                    continue
                median = statistics.median(samples)
                if syntax == BASELINE and baseline_ms is None:
                    baseline_ms = median
                row = {
                    "size": f"{rows}x{columns}",
                    "transfer_syntax": syntax,
                    "name": _name(syntax),
                    "plugin": plugin or "native",
                    "file_mb": round(len(data) / 2**20, 2),
                    "median_ms": round(median, 1),
                    "p90_ms": round(float(np.percentile(samples, 90)), 1),
                    "ratio_to_uncompressed": round(median / baseline_ms, 2)
                    if baseline_ms
                    else None,
                    "reps": len(samples),
                }
                rows_out.append(row)
                print(_format_row(row), flush=True)
    return {
        "benchmark": "decode + preprocess to 1024, one core",
        "command": "uv run python -m benchmarks.bench_decode --out benchmarks/results/decode.json",
        "where": where,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "resolution": RESOLUTION,
        "bits_stored": BITS_STORED,
        "goal": "uncompressed <= 30 ms median on one core",
        "results": rows_out,
    }


def _name(syntax: str) -> str:
    from pydicom.uid import UID

    return UID(syntax).name


def _format_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['size']} | {row['name']} | {row['plugin']} | {row['file_mb']} | "
        f"{row['median_ms']} | {row['p90_ms']} | {row['ratio_to_uncompressed']} |"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| image | transfer syntax | decoder | file MB | median ms | p90 ms | x uncompressed |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [_format_row(r) for r in report["results"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    parser.add_argument("--budget-s", type=float, default=3.0, help="time per case")
    parser.add_argument("--min-reps", type=int, default=5)
    args = parser.parse_args()
    report = run(args.budget_s, args.min_reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
