"""Benchmark: JPEG 2000 / HTJ2K decoded at the wavelet level the model needs (issue #15).

Three sections, full decode (``read_dicom(data)``, the plugin order of
:mod:`imaging.decoders`) against reduced decode (``read_dicom(data, min_side=R)``, Pillow's
OpenJPEG ``reduce``), both followed by ``preprocess`` to ``R``, in the same run:

* **tolerance**: max / mean absolute difference of the model input, in display units
  ([0, 1]; the normalised input differs by 4x that), over the letterbox content, for
  2048x2048 and 3000x2500 (rows x columns) site-``a`` phantoms, at 256, 512 and 1024, for
  JPEG 2000 lossless and lossy and (when imagecodecs is installed) HTJ2K lossless;
* **timing**: decode + preprocess to 1024 and 512, median of ``--reps`` runs after a
  warm-up, with OpenJPEG on 1 thread and on ``OPJ_NUM_THREADS`` = the usable CPUs;
* **auroc**: the demo models (``models/manifest.json``, ONNX Runtime, one thread) on
  ``--auroc-n`` fresh JPEG 2000 lossless phantoms (half positive) of ``--auroc-size``
  pixels, AUROC from the full and from the reduced decode at each model resolution.

    uv run python -m benchmarks.bench_j2k_reduce --out benchmarks/results/j2k_reduce.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from imaging.dicom import read_dicom
from imaging.geometry import LetterboxGeometry
from imaging.phantoms.acquisition import site_profile
from imaging.phantoms.dataset import encode_phantom, generate_phantom
from imaging.preprocess import NORMALISATION_STD, preprocess

COMMAND = "uv run python -m benchmarks.bench_j2k_reduce --out benchmarks/results/j2k_reduce.json"
SIZES = ((2048, 2048), (3000, 2500))
RESOLUTIONS = (256, 512, 1024)
TIMED_RESOLUTIONS = (1024, 512)
SYNTAXES = {"j2k-lossless": "1.2.840.10008.1.2.4.90", "j2k": "1.2.840.10008.1.2.4.91"}
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
AUROC_SEED = 15015  # not a seed the demo models were trained, validated or tested on


def phantom_dicom(
    rows: int, columns: int, syntax: str, *, seed: int = 0, index: int = 0
) -> tuple[bytes, bool]:
    """A site-``a`` phantom as DICOM bytes in ``syntax`` (an alias, a UID or HTJ2K lossless)
    and whether it is positive."""
    profile = site_profile("a")
    ph = generate_phantom(seed, index, profile, rows, columns)
    positive = bool(ph.metadata["pneumothorax"])
    if syntax != HTJ2K_LOSSLESS:
        data, _ = encode_phantom(ph, profile, transfer_syntax=syntax, bits_stored=12)
        return data, positive
    return htj2k_dicom(ph, profile), positive


def htj2k_dicom(ph: Any, profile: Any) -> bytes:
    """The phantom, stored as its site stores it, as HTJ2K lossless."""
    _, ds = encode_phantom(ph, profile, transfer_syntax="explicit-le", bits_stored=12)
    return htj2k_encapsulate(ds)


def htj2k_encapsulate(ds: Any) -> bytes:
    """``ds`` (native pixels) as HTJ2K lossless DICOM bytes: the codestream from imagecodecs
    (OpenJPH), encapsulated by hand, as no DICOM writer here encodes HTJ2K. The tests make
    their HTJ2K files with it too."""
    import io

    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    codestream = bytes(imagecodecs.htj2k_encode(ds.pixel_array, reversible=True))
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(HTJ2K_LOSSLESS)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# the service's REDUCED_DECODE modes: decode no finer than FACTOR x R (service/pipeline.py)
MODES = {"fast": 1, "accurate": 2}
FACTOR = MODES["fast"]


def model_input(data: bytes, resolution: int, reduced: bool) -> tuple[npt.NDArray[Any], int]:
    """``(1, R, R)`` model input and the reduction factor used (1 = full decode)."""
    decoded = read_dicom(data, min_side=resolution * FACTOR if reduced else None)
    return preprocess(decoded.pixels, resolution, grid=decoded.grid).image, decoded.reduction


def content_diff(
    full: npt.NDArray[Any], reduced: npt.NDArray[Any], rows: int, columns: int
) -> npt.NDArray[np.float32]:
    """|full - reduced| in display units over the letterbox content (padding excluded)."""
    g = LetterboxGeometry.fit(rows, columns, full.shape[-1])
    window = (
        slice(g.offset_y, g.offset_y + g.content_rows),
        slice(g.offset_x, g.offset_x + g.content_columns),
    )
    diff = np.abs(full[0][window] - reduced[0][window]) * np.float32(NORMALISATION_STD)
    return np.asarray(diff, dtype=np.float32)


def tolerance(sizes: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    syntaxes = dict(SYNTAXES)
    try:
        import imagecodecs  # noqa: F401

        syntaxes["htj2k-lossless"] = HTJ2K_LOSSLESS
    except ImportError:
        print("imagecodecs not installed: no HTJ2K rows")
    out: list[dict[str, Any]] = []
    for rows, columns in sizes:
        for name, syntax in syntaxes.items():
            data, _ = phantom_dicom(rows, columns, syntax)
            for resolution in RESOLUTIONS:
                full, _ = model_input(data, resolution, reduced=False)
                red, factor = model_input(data, resolution, reduced=True)
                diff = content_diff(full, red, rows, columns)
                row = {
                    "size": f"{rows}x{columns}",
                    "syntax": name,
                    "resolution": resolution,
                    "reduction": factor,
                    "max_abs": round(float(diff.max()), 4),
                    "mean_abs": round(float(diff.mean()), 5),
                    "p99_abs": round(float(np.percentile(diff, 99)), 4),
                }
                out.append(row)
                print("tolerance", row, flush=True)
    return out


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def timing(sizes: tuple[tuple[int, int], ...], reps: int) -> list[dict[str, Any]]:
    cpus = len(os.sched_getaffinity(0))
    out: list[dict[str, Any]] = []
    for rows, columns in sizes:
        data, _ = phantom_dicom(rows, columns, SYNTAXES["j2k-lossless"])
        for threads in sorted({1, cpus}):
            # OpenJPEG (Pillow's and pylibjpeg's) reads this when it creates a decoder;
            # this process decodes on one thread at a time, so setting it here is safe.
            os.environ["OPJ_NUM_THREADS"] = str(threads)
            for resolution in TIMED_RESOLUTIONS:
                full = _median_ms(partial(model_input, data, resolution, False), reps)
                red = _median_ms(partial(model_input, data, resolution, True), reps)
                row = {
                    "size": f"{rows}x{columns}",
                    "syntax": "j2k-lossless",
                    "opj_threads": threads,
                    "resolution": resolution,
                    "full_ms": round(full, 1),
                    "reduced_ms": round(red, 1),
                    "speedup": round(full / red, 2),
                    "reps": reps,
                }
                out.append(row)
                print("timing", row, flush=True)
    os.environ.pop("OPJ_NUM_THREADS", None)
    return out


def auroc(n: int, size: int, models_dir: Path) -> dict[str, Any]:
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    from cxrmodel.interface import INPUT, LOGIT

    manifest = json.loads((models_dir / "manifest.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {
        int(m["resolution"]): ort.InferenceSession(
            str(models_dir / m["files"]["onnx"]["path"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        for m in manifest["models"]
    }
    labels: list[int] = []
    scores: dict[str, list[float]] = {f"{r}/{k}": [] for r in sessions for k in ("full", "red")}
    reductions: dict[int, set[int]] = {r: set() for r in sessions}
    for index in range(n):
        # alternate positive and negative by drawing until the label fits
        data, positive = phantom_dicom(
            size, size, SYNTAXES["j2k-lossless"], seed=AUROC_SEED, index=index
        )
        labels.append(int(positive))
        for resolution, session in sessions.items():
            for kind, reduced in (("full", False), ("red", True)):
                image, factor = model_input(data, resolution, reduced)
                if reduced:
                    reductions[resolution].add(factor)
                logit = session.run([LOGIT], {INPUT: image[None]})[0]
                scores[f"{resolution}/{kind}"].append(float(np.ravel(logit)[0]))
    result: dict[str, Any] = {
        "n": n,
        "positives": int(sum(labels)),
        "native_size": size,
        "seed": AUROC_SEED,
        "syntax": "j2k-lossless",
        "per_resolution": [],
    }
    for resolution in sorted(sessions):
        full = np.array(scores[f"{resolution}/full"])
        red = np.array(scores[f"{resolution}/red"])
        entry = {
            "resolution": resolution,
            "reduction": sorted(reductions[resolution]),
            "auroc_full": round(float(roc_auc_score(labels, full)), 4),
            "auroc_reduced": round(float(roc_auc_score(labels, red)), 4),
            "max_abs_logit_diff": round(float(np.abs(full - red).max()), 4),
            "same_decision_at_0": int(np.sum((full > 0) == (red > 0))),
        }
        # "unchanged" as a test, not a reading of two numbers: paired DeLong on the same
        # images, with the 95% interval of the difference (full - reduced)
        from training.statistics import paired_delong

        paired = paired_delong(labels, full, red)
        entry["delong_difference"] = round(paired.difference, 4)
        entry["delong_ci95"] = [
            round(paired.difference - 1.96 * paired.se, 4),
            round(paired.difference + 1.96 * paired.se, 4),
        ]
        entry["delong_p"] = round(paired.p_value, 4)
        result["per_resolution"].append(entry)
        print("auroc", entry, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/j2k_reduce.json"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="fast",
        help="REDUCED_DECODE mode: decode no finer than R (fast) or 2R",
    )
    parser.add_argument("--auroc-n", type=int, default=40)
    parser.add_argument("--auroc-size", type=int, default=1024)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument(
        "--sections", default="tolerance,timing,auroc", help="comma-separated subset"
    )
    args = parser.parse_args()
    global FACTOR
    FACTOR = MODES[args.mode]
    cv2.setNumThreads(1)
    sections = set(args.sections.split(","))
    report: dict[str, Any] = {
        "benchmark": "JPEG 2000 reduced-resolution decode vs full decode (issue #15)",
        "command": "uv run python -m benchmarks.bench_j2k_reduce " + " ".join(sys.argv[1:]),
        "mode": args.mode,
        "machine": {
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "units": "tolerance: |full - reduced| in display units [0, 1] over the content box",
    }
    if "tolerance" in sections:
        report["tolerance"] = tolerance(SIZES)
    if "timing" in sections:
        report["timing"] = timing(SIZES, args.reps)
    if "auroc" in sections:
        report["auroc"] = auroc(args.auroc_n, args.auroc_size, args.models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
