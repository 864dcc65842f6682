"""Benchmark: what decoding in worker processes costs (issue #16, codec isolation).

Two measurements, each against its baseline in the same run:

* **decode call**: :func:`imaging.dicom.read_dicom` in this process (the thread mode)
  against :meth:`service.decode_pool.DecodePool.decode` with pixels through the shared
  segment and through the pipe, interleaved, medians of ``--repeats``; for uncompressed
  images of 1024², 2048² and 3000x2500 and a 2048² JPEG 2000 (decode-bound). The
  difference is the cost of moving the body in and the float32 pixels out.
* **service**: sequential ``/v1/predict`` of a 2048² phantom at 256 px against two real
  servers, ``SHARPCXR_DECODE_ISOLATION=thread`` and ``process``, alternating requests;
  the ratio of medians and the ``decode`` stage each reports.

    uv run python -m benchmarks.bench_decode_isolation \
        --out benchmarks/results/decode_isolation.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_service import run_cli, server, service_argv
from imaging.dicom import read_dicom
from service.decode_pool import DecodePool

COMMAND = (
    "uv run python -m benchmarks.bench_decode_isolation "
    "--out benchmarks/results/decode_isolation.json"
)
MAX_PIXELS = 36_000_000


def _bodies() -> dict[str, bytes]:
    from pydicom.uid import JPEG2000Lossless

    from tests.conftest import build_dataset, to_bytes

    rng = np.random.default_rng(16)
    out: dict[str, bytes] = {}
    for rows, columns in ((1024, 1024), (2048, 2048), (3000, 2500)):
        pixels = rng.integers(0, 4096, (rows, columns), dtype=np.uint16)
        out[f"uncompressed {rows}x{columns}"] = to_bytes(build_dataset(pixels))
    smooth = (np.add.outer(np.arange(2048), np.arange(2048)) % 4096).astype(np.uint16)
    ds = build_dataset(smooth)
    ds.compress(JPEG2000Lossless)
    out["J2K lossless 2048x2048"] = to_bytes(ds)
    return out


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def decode_calls(repeats: int) -> list[dict[str, Any]]:
    segment = DecodePool(1, timeout_s=60, memory_mb=4096)
    pipe = DecodePool(1, timeout_s=60, memory_mb=4096, segment_bytes=0)
    segment.start()
    pipe.start()
    rows = []
    try:
        for name, body in _bodies().items():
            modes: dict[str, Callable[[], object]] = {
                "in_process": lambda b=body: read_dicom(b, max_pixels=MAX_PIXELS),
                "worker_segment": lambda b=body: segment.decode(b, max_pixels=MAX_PIXELS),
                "worker_pipe": lambda b=body: pipe.decode(b, max_pixels=MAX_PIXELS),
            }
            for fn in modes.values():  # warm-up, and every mode gives the same pixels
                fn()
            results: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(repeats):  # interleaved: drift on a shared machine hits all
                for mode, fn in modes.items():
                    results[mode].append(_median_ms(fn, 1))
            med = {m: statistics.median(v) for m, v in results.items()}
            rows.append({
                "image": name,
                "bytes": len(body),
                "pixel_mb": read_dicom(body).pixels.nbytes / 2**20,
                **{f"{m}_ms": round(v, 2) for m, v in med.items()},
                "segment_overhead_ms": round(med["worker_segment"] - med["in_process"], 2),
                "pipe_overhead_ms": round(med["worker_pipe"] - med["in_process"], 2),
                "segment_ratio": round(med["worker_segment"] / med["in_process"], 3),
            })  # fmt: skip
    finally:
        segment.close()
        pipe.close()
    return rows


def service_pair(models_dir: Path, requests: int) -> dict[str, Any]:
    import httpx

    from tests.service.conftest import phantom, phantom_dicom

    body = phantom_dicom(phantom(1, size=2048))
    env = {
        "SHARPCXR_MODELS_DIR": str(models_dir),
        "SHARPCXR_LOG_LEVEL": "WARNING",
        "SHARPCXR_DEFAULT_RESOLUTION": "256",
    }
    latency: dict[str, list[float]] = {"thread": [], "process": []}
    decode: dict[str, list[float]] = {"thread": [], "process": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        server("thread", service_argv(), {**env, "SHARPCXR_DECODE_ISOLATION": "thread",
               "SHARPCXR_DATA_DIR": f"{tmp}/t"}, Path(tmp), 300) as thread_srv,
        server("process", service_argv(), {**env, "SHARPCXR_DECODE_ISOLATION": "process",
               "SHARPCXR_DATA_DIR": f"{tmp}/p"}, Path(tmp), 300) as process_srv,
        httpx.Client(timeout=120) as client,
    ):  # fmt: skip
        urls = {"thread": thread_srv.base_url, "process": process_srv.base_url}
        for i in range(requests + 2):
            order = ["thread", "process"] if i % 2 == 0 else ["process", "thread"]
            for mode in order:
                started = time.perf_counter()
                r = client.post(
                    urls[mode] + "/v1/predict",
                    content=body,
                    headers={"content-type": "application/dicom"},
                )
                elapsed = (time.perf_counter() - started) * 1e3
                r.raise_for_status()
                if i >= 2:  # warm-up
                    latency[mode].append(elapsed)
                    decode[mode].append(r.json()["timings_ms"]["decode"])
    med = {m: statistics.median(v) for m, v in latency.items()}
    dec = {m: statistics.median(v) for m, v in decode.items()}
    return {
        "image": "phantom 2048x2048 uncompressed, 256 px model",
        "requests_each": requests,
        "median_ms": {m: round(v, 2) for m, v in med.items()},
        "decode_stage_ms": {m: round(v, 2) for m, v in dec.items()},
        "ratio_process_over_thread": round(med["process"] / med["thread"], 3),
        "overhead_ms": round(med["process"] - med["thread"], 2),
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_isolation.json"))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--requests", type=int, default=30, help="per service, sequential")
    p.add_argument("--models-dir", type=Path, default=None, help="default: the test models")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    models_dir = args.models_dir
    if models_dir is None:
        from tests.service.models_fixture import build_fixture_models

        models_dir = build_fixture_models()
    return {
        "command": COMMAND,
        "argv": list(argv),
        "machine": {"cores": len(__import__("os").sched_getaffinity(0)),
                    "python": platform.python_version()},
        "decode_calls": decode_calls(args.repeats),
        "service": service_pair(models_dir, args.requests),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Decoding in worker processes: the cost (issue #16)",
        "",
        f"`{report['command']}` ({report['machine']['cores']} cores)",
        "",
        "| image | pixels MB | in process ms | worker, shared segment ms | worker, pipe ms "
        "| segment overhead ms | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["decode_calls"]:
        lines.append(
            f"| {r['image']} | {r['pixel_mb']:.0f} | {r['in_process_ms']} | "
            f"{r['worker_segment_ms']} | {r['worker_pipe_ms']} | {r['segment_overhead_ms']} | "
            f"{r['segment_ratio']} |"
        )
    s = report["service"]
    lines += [
        "",
        f"Service, {s['image']}, {s['requests_each']} sequential requests each, alternating: "
        f"median {s['median_ms']['thread']} ms (thread) vs {s['median_ms']['process']} ms "
        f"(process), ratio {s['ratio_process_over_thread']}, overhead {s['overhead_ms']} ms; "
        f"decode stage {s['decode_stage_ms']['thread']} vs {s['decode_stage_ms']['process']} ms.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(argv, parse_args, run, markdown)


if __name__ == "__main__":
    main()
