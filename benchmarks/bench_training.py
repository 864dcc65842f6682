"""Benchmark: what each resolution costs to train and to serve on CPU.

Two sections, each with its ratios measured against a baseline in the same run (these
machines are shared and noisy, so ratios travel better than absolute numbers):

1. **Training step** (forward + BCE loss + backward + AdamW step, protocol learning rate
   and weight decay, random inputs and labels) for DenseNet-121 and the ``compact`` demo
   model at each resolution, gradient checkpointing off and on, in each memory format
   (``--memory-formats``, default both). Batches are smaller than the protocol's (a full
   batch at 1024 px takes about a minute on a 2-core CPU); the batch used and the
   protocol's batch are both recorded. Reported: median step time, images/s
   (``batch / median step``) and peak memory; ratios checkpointing on / off (contiguous
   rows only, so formats never mix) and channels-last / contiguous (same checkpointing).

   Memory format: ``contiguous`` is torch's default NCHW; ``channels_last`` converts the
   model (``model.to(memory_format=torch.channels_last)``) and the input batch
   (``images.contiguous(memory_format=torch.channels_last)``, a no-op for one channel,
   which is why the training loop converts only the model) before the warm-up step. On
   CPU, oneDNN's convolution kernels work on blocked / NHWC layouts: NCHW tensors are
   reordered into them and back around every convolution (and again in backward), while
   channels-last activations feed them directly. DenseNet's many small convolutions and
   concatenations make those reorders a large share of the step, hence the measured
   speed-up (on a 2-core AVX2 EPYC, checkpointing off: 1.2-1.5x for DenseNet-121 and
   1.3-1.8x for the compact model from 256 px up). Each row records
   ``features_channels_last``, whether the feature map really
   came out channels-last in the warm-up step, so a format that silently fell back to
   NCHW shows up in the results.

   Peak memory: every case runs in a fresh subprocess so peaks cannot carry over from an
   earlier case; ``tracemalloc`` does not see torch's allocations, so the peak is the
   process high-water mark ``getrusage(RUSAGE_SELF).ru_maxrss`` minus the resident set
   (``/proc/self/statm``) measured after the model, optimiser and batch are built, i.e.
   what the training steps add: activations kept for backward, gradients, AdamW moments.
   The warm-up step is excluded from the timings but not from the peak (it allocates the
   AdamW moments, which every later step keeps).

2. **Inference latency** of the exported DenseNet-121 (untrained weights) in ONNX Runtime
   (CPUExecutionProvider, intra-op threads = torch threads, graph optimisation ALL,
   ``logit``, ``cam`` and ``embedding`` fetched) against the torch eager
   ``forward_explained`` of the same model on the same input and thread count: median and
   p90 over a time budget after warm-up, and the ratio ORT / torch.

Threads: torch and ONNX Runtime both use ``--threads`` (default: the cores this process
may use). Run on a quiet machine: OpenMP threads that share their cores with other work
stall at every barrier (the load average is recorded for that reason).

    uv run python -m benchmarks.bench_training --out benchmarks/results/training.json
    uv run python -m benchmarks.bench_training --quick  # smoke: 64 px, seconds per case
    uv run python -m benchmarks.bench_training --memory-formats channels_last --out /tmp/cl.json

``--memory-formats`` with one format runs only that one (no channels-last / contiguous
ratios then).

``--out`` is rewritten with the sections of this run only: a ``--section`` run to the
results file drops the other section from its JSON and markdown.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cxrmodel.networks import build_model
from training.config import TrainConfig, default_batch_size

if TYPE_CHECKING:
    import onnxruntime as ort

# onnxruntime and the exporter (onnx, onnxscript) are imported where used: the training
# subprocesses then start faster and their memory baseline holds torch only.

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_MARKER = "BENCH_RESULT "  # prefix of the one stdout line a training subprocess returns
CASE_TIMEOUT_S = 1800  # one training case; a case past it is recorded as failed, not fatal

TRAIN_ARCHITECTURES = ("densenet121", "compact")
#: ``--memory-formats`` choices; ``contiguous`` is the baseline of the format ratios
MEMORY_FORMATS = ("contiguous", "channels_last")
TRAIN_RESOLUTIONS = (64, 128, 256, 512, 1024)
#: CPU batch per resolution: about the same pixels per step from 256 px up
TRAIN_BATCH = {64: 16, 128: 16, 256: 8, 512: 4, 1024: 2}
INFER_ARCHITECTURE = "densenet121"
INFER_RESOLUTIONS = (256, 512, 1024)
INFER_BATCHES = (1, 8)

QUICK_TRAIN_RESOLUTIONS = (64,)
QUICK_TRAIN_BATCH = 2
QUICK_INFER_RESOLUTIONS = (64,)
QUICK_INFER_BATCHES = (1, 2)

MAX_TRAIN_STEPS = 50
MAX_INFER_REPS = 200


# ---- machine ---------------------------------------------------------------------------


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "cores": cores(),
        # OpenMP threads that share cores with other processes wait on each other at every
        # op's barrier (measured here: DenseNet-121 at 64 px, 23 ms on 1 thread, 3.7 s on
        # 2 threads with a load of 3 on 2 cores), so the load says whether to trust a run.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


# ---- memory ----------------------------------------------------------------------------


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc/self/statm``; else the high-water mark)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's resident high-water mark (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def _mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


# ---- section 1: training steps ---------------------------------------------------------


def timed_loop(
    fn: Callable[[], object], budget_s: float, min_reps: int, max_reps: int
) -> list[float]:
    """Seconds per call of ``fn``: at least ``min_reps`` calls, more while within budget."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_reps or (time.perf_counter() < deadline and len(samples) < max_reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def train_case(
    architecture: str,
    resolution: int,
    batch: int,
    checkpointing: bool,
    budget_s: float,
    channels_last: bool = False,
    min_steps: int = 2,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time optimiser steps of one configuration in *this* process; returns its row.

    ``channels_last``: model and batch in ``torch.channels_last`` (else contiguous NCHW).
    Meant to run in a fresh process (see :func:`run_train_case`): the peak is this
    process's high-water mark.
    """
    torch.set_num_threads(threads or cores())
    torch.manual_seed(seed)
    protocol = TrainConfig()
    model = build_model(architecture, "standard", num_classes=1)
    model.set_gradient_checkpointing(checkpointing)
    model.train()
    images = torch.randn(batch, 1, resolution, resolution)
    labels = torch.randint(0, 2, (batch, 1)).float()
    if channels_last:  # before the optimiser, as in the training loop
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

    features_layout: list[bool] = []
    hook = model.features.register_forward_hook(
        lambda _module, _inputs, output: features_layout.append(
            output.is_contiguous(memory_format=torch.channels_last)
        )
    )
    gc.collect()
    baseline = current_rss_bytes()
    step()  # warm-up: oneDNN primitive creation, AdamW state, first-touch page faults
    hook.remove()
    samples = timed_loop(step, budget_s, min_steps, MAX_TRAIN_STEPS)
    peak = peak_rss_bytes()
    median_s = statistics.median(samples)
    return {
        "architecture": architecture,
        "resolution": resolution,
        "batch": batch,
        "protocol_batch": default_batch_size(resolution),
        "checkpointing": checkpointing,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "features_channels_last": all(features_layout) if features_layout else None,
        "steps": len(samples),
        "step_s_median": round(median_s, 3),
        "step_s_p90": round(float(np.percentile(samples, 90)), 3),
        "images_per_s": round(batch / median_s, 2),
        "baseline_rss_mib": _mib(baseline),
        "peak_rss_mib": _mib(peak),
        "peak_over_baseline_mib": _mib(max(0, peak - baseline)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
    }


def run_train_case(case: dict[str, Any], timeout_s: float = CASE_TIMEOUT_S) -> dict[str, Any]:
    """Run :func:`train_case` in a fresh interpreter; a failure (OOM kill, timeout) is a row."""
    command = [sys.executable, "-m", "benchmarks.bench_training", "--train-case", json.dumps(case)]
    failed = {key: case[key] for key in ("architecture", "resolution", "batch", "checkpointing")}
    failed["memory_format"] = "channels_last" if case.get("channels_last") else "contiguous"
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line.removeprefix(RESULT_MARKER)))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**failed, "error": f"exit {proc.returncode}: {tail}"}


def _memory_format(row: dict[str, Any]) -> str:
    return str(row.get("memory_format", "contiguous"))  # rows from before the format axis


def train_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checkpointing on / off for each (architecture, resolution) measured both ways.

    Contiguous rows only: a channels-last row never pairs with a contiguous one here.
    """
    by_key = {
        (r["architecture"], r["resolution"], r["checkpointing"]): r
        for r in rows
        if "error" not in r and _memory_format(r) == "contiguous"
    }
    ratios: list[dict[str, Any]] = []
    for (arch, res, ckpt), on in by_key.items():
        off = by_key.get((arch, res, False))
        if not ckpt or off is None:
            continue
        memory_off = off["peak_over_baseline_mib"]
        ratios.append(
            {
                "architecture": arch,
                "resolution": res,
                "throughput_on_over_off": round(on["images_per_s"] / off["images_per_s"], 2),
                "memory_on_over_off": round(on["peak_over_baseline_mib"] / memory_off, 2)
                if memory_off
                else None,
            }
        )
    return ratios


def format_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Channels-last / contiguous for each (architecture, resolution, checkpointing)
    measured in both formats: images/s and peak memory (over the baseline)."""
    by_key = {
        (r["architecture"], r["resolution"], r["checkpointing"], _memory_format(r)): r
        for r in rows
        if "error" not in r
    }
    ratios: list[dict[str, Any]] = []
    for (arch, res, ckpt, fmt), cl in by_key.items():
        base = by_key.get((arch, res, ckpt, "contiguous"))
        if fmt != "channels_last" or base is None:
            continue
        memory_base = base["peak_over_baseline_mib"]
        ratios.append(
            {
                "architecture": arch,
                "resolution": res,
                "checkpointing": ckpt,
                "throughput_cl_over_contiguous": round(
                    cl["images_per_s"] / base["images_per_s"], 2
                ),
                "memory_cl_over_contiguous": round(cl["peak_over_baseline_mib"] / memory_base, 2)
                if memory_base
                else None,
            }
        )
    return ratios


def run_training(
    architectures: Sequence[str],
    resolutions: Sequence[int],
    batch_for: Callable[[int], int],
    budget_s: float,
    min_steps: int,
    threads: int,
    memory_formats: Sequence[str] = MEMORY_FORMATS,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for arch in architectures:
        for res in resolutions:
            for fmt in memory_formats:
                for ckpt in (False, True):
                    case = {
                        "architecture": arch,
                        "resolution": res,
                        "batch": batch_for(res),
                        "checkpointing": ckpt,
                        "channels_last": fmt == "channels_last",
                        "budget_s": budget_s,
                        "min_steps": min_steps,
                        "threads": threads,
                    }
                    row = run_train_case(case)
                    rows.append(row)
                    print(_train_row(row), flush=True)
    return {
        "memory_formats": list(memory_formats),
        "results": rows,
        "ratios": train_ratios(rows),
        "format_ratios": format_ratios(rows),
    }


# ---- section 2: inference latency -----------------------------------------------------


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one sequential graph: parallelism is inside the ops
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(samples) * 1e3, 2),
        "p90_ms": round(float(np.percentile(samples, 90)) * 1e3, 2),
        "reps": len(samples),
    }


def infer_case(
    session: ort.InferenceSession,
    model: nn.Module,
    resolution: int,
    batch: int,
    budget_s: float,
    min_reps: int,
    warmup: int = 2,
) -> dict[str, Any]:
    """ORT and torch eager latency of one batch size on the same input."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((batch, 1, resolution, resolution), dtype=np.float32)
    tensor = torch.from_numpy(image)
    feeds = {"image": image}
    outputs = ["logit", "cam", "embedding"]

    def run_ort() -> list[Any]:
        return session.run(outputs, feeds)

    # Torch stays contiguous NCHW here (the exported graph's input layout); ORT picks its own.
    def run_torch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return model.forward_explained(tensor, 0)  # type: ignore[operator]

    for _ in range(warmup):  # ORT allocates its arena and oneDNN builds primitives here
        ort_logit, ort_cam, _ = run_ort()
        torch_logit, torch_cam, _ = run_torch()
    ort_stats = _latency(timed_loop(run_ort, budget_s, min_reps, MAX_INFER_REPS))
    torch_stats = _latency(timed_loop(run_torch, budget_s, min_reps, MAX_INFER_REPS))
    return {
        "architecture": INFER_ARCHITECTURE,
        "resolution": resolution,
        "batch": batch,
        "ort": ort_stats,
        "torch": torch_stats,
        "ort_over_torch": round(ort_stats["median_ms"] / torch_stats["median_ms"], 3),
        # a sanity check that both sides computed the same thing
        "max_abs_diff_logit": float(np.abs(ort_logit - torch_logit.numpy()).max()),
        "max_abs_diff_cam": float(np.abs(ort_cam - torch_cam.numpy()).max()),
    }


def run_inference(
    architecture: str,
    resolutions: Sequence[int],
    batches: Sequence[int],
    budget_s: float,
    min_reps: int,
    threads: int,
) -> dict[str, Any]:
    from training.export import export_onnx

    torch.set_num_threads(threads)  # same thread count on both sides of the ratio
    torch.manual_seed(0)
    model = build_model(architecture, "standard", num_classes=1).eval()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        for res in resolutions:
            start = time.perf_counter()
            with warnings.catch_warnings():  # the exporter's own deprecation noise
                warnings.simplefilter("ignore", FutureWarning)
                path = export_onnx(model, res, Path(tmp) / f"{architecture}_{res}.onnx")
            export_s = round(time.perf_counter() - start, 1)
            session = ort_session(path, threads)
            for batch in batches:
                row = infer_case(session, model, res, batch, budget_s, min_reps)
                row["export_s"] = export_s
                rows.append(row)
                print(_infer_row(row), flush=True)
            del session
    return {
        "architecture": architecture,
        "provider": "CPUExecutionProvider",
        "intra_op_threads": threads,
        "torch_threads": threads,
        "graph_optimization": "ORT_ENABLE_ALL",
        "outputs_fetched": ["logit", "cam"],
        "results": rows,
    }


# ---- report ----------------------------------------------------------------------------


def _train_row(r: dict[str, Any]) -> str:
    ckpt = "on" if r["checkpointing"] else "off"
    fmt = _memory_format(r)
    head = f"| {r['architecture']} | {r['resolution']} | {r['batch']} | {fmt} | {ckpt}"
    if "error" in r:
        return f"{head} | {r['error']} |"
    return (
        f"{head} | {r['steps']} | "
        f"{r['step_s_median']} | {r['images_per_s']} | {r['peak_over_baseline_mib']} | "
        f"{r['peak_rss_mib']} |"
    )


def _ratio_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['architecture']} | {r['resolution']} | {r['throughput_on_over_off']} | "
        f"{r['memory_on_over_off']} |"
    )


def _format_ratio_row(r: dict[str, Any]) -> str:
    ckpt = "on" if r["checkpointing"] else "off"
    return (
        f"| {r['architecture']} | {r['resolution']} | {ckpt} | "
        f"{r['throughput_cl_over_contiguous']} | {r['memory_cl_over_contiguous']} |"
    )


def _infer_row(r: dict[str, Any]) -> str:
    o, t = r["ort"], r["torch"]
    return (
        f"| {r['resolution']} | {r['batch']} | {o['median_ms']} | {o['p90_ms']} | "
        f"{t['median_ms']} | {t['p90_ms']} | {r['ort_over_torch']} | "
        f"{r['max_abs_diff_logit']:.1e} |"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Command: `{report['command']}`", ""]
    m = report["machine"]
    lines += [
        f"Machine: {m['cores']} cores, {report['threads']} threads used, load average "
        f"{m['load_average_1_5_15']}, {m['platform']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}",
        "",
    ]
    if "training" in report:
        lines += [
            "### Training step (forward + BCE + backward + AdamW), CPU",
            "",
            "| model | R | batch | memory format | checkpointing | steps | median step s "
            "| images/s | peak over baseline MiB | peak RSS MiB |",
            "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
            *(_train_row(r) for r in report["training"]["results"]),
            "",
            "### Gradient checkpointing on / off (contiguous)",
            "",
            "| model | R | images/s on/off | peak memory on/off |",
            "|---|---:|---:|---:|",
            *(_ratio_row(r) for r in report["training"]["ratios"]),
            "",
        ]
        if report["training"].get("format_ratios"):
            lines += [
                "### Channels-last / contiguous",
                "",
                "| model | R | checkpointing | images/s CL/contiguous "
                "| peak memory CL/contiguous |",
                "|---|---:|---|---:|---:|",
                *(_format_ratio_row(r) for r in report["training"]["format_ratios"]),
                "",
            ]
    if "inference" in report:
        inf = report["inference"]
        lines += [
            f"### Inference latency, {inf['architecture']}: ONNX Runtime CPU vs torch eager "
            f"({inf['intra_op_threads']} threads)",
            "",
            "| R | batch | ORT median ms | ORT p90 ms | torch median ms | torch p90 ms "
            "| ORT/torch | max abs diff logit |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(_infer_row(r) for r in inf["results"]),
            "",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    threads = args.threads or cores()
    if args.quick:
        train_res, infer_res, batches = (
            QUICK_TRAIN_RESOLUTIONS,
            QUICK_INFER_RESOLUTIONS,
            QUICK_INFER_BATCHES,
        )

        def batch_for(_res: int) -> int:
            return QUICK_TRAIN_BATCH
    else:
        train_res, infer_res, batches = TRAIN_RESOLUTIONS, INFER_RESOLUTIONS, INFER_BATCHES

        def batch_for(res: int) -> int:
            return TRAIN_BATCH[res]

    report: dict[str, Any] = {
        "benchmark": "training step and ONNX Runtime inference cost per resolution, CPU",
        "command": "uv run python -m benchmarks.bench_training " + shlex.join(argv),
        "machine": machine_info(),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "threads": threads,
        "memory_method": "fresh subprocess per training case; ru_maxrss minus the RSS "
        "(/proc/self/statm) after building model, optimiser and batch",
    }
    if args.section in ("all", "training"):
        print(
            "| model | R | batch | format | ckpt | steps | step s | images/s | peak+ MiB "
            "| peak MiB |"
        )
        report["training"] = run_training(
            TRAIN_ARCHITECTURES,
            train_res,
            batch_for,
            args.budget_s,
            args.min_steps,
            threads,
            args.memory_formats,
        )
    if args.section in ("all", "inference"):
        print("| R | batch | ORT ms | ORT p90 | torch ms | torch p90 | ORT/torch | diff |")
        report["inference"] = run_inference(
            INFER_ARCHITECTURE, infer_res, batches, args.budget_s, args.min_reps, threads
        )
    return report


def memory_formats_arg(text: str) -> tuple[str, ...]:
    """``--memory-formats``: comma-separated names from :data:`MEMORY_FORMATS`, in run order."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in MEMORY_FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MEMORY_FORMATS)}, got {text!r}"
        )
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (.md beside it); default benchmarks/results/training.json, "
        "or training_quick.json with --quick so a smoke run never overwrites real results",
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="seconds per case (default 20; 0.5 quick)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and ORT intra-op threads (default: cores)"
    )
    parser.add_argument("--min-steps", type=int, default=2, help="measured training steps")
    parser.add_argument("--min-reps", type=int, default=3, help="measured inference runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--section", choices=("all", "training", "inference"), default="all")
    parser.add_argument(
        "--memory-formats",
        type=memory_formats_arg,
        default=MEMORY_FORMATS,
        help="training memory formats, comma-separated (default: contiguous,channels_last); "
        "the channels-last / contiguous ratios need both",
    )
    parser.add_argument("--train-case", help=argparse.SUPPRESS)  # internal: one subprocess case
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.train_case:
        print(RESULT_MARKER + json.dumps(train_case(**json.loads(args.train_case))), flush=True)
        return
    if args.out is None:
        name = "training_quick.json" if args.quick else "training.json"
        args.out = REPO_ROOT / "benchmarks" / "results" / name
    if args.budget_s is None:
        args.budget_s = 0.5 if args.quick else 20.0
    report = run(args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
