"""Benchmark: the torch backend's closed-form Grad-CAM path on a GPU (issue #15).

Section ``model`` (model only): DenseNet-121 (``cxrmodel.networks.build_model("densenet121")``,
untrained weights) at 224, 512 and 1024 px, batch 1, 8 and 32, one forward pass that
gives logit, CAM and embedding (``forward_explained``), in these variants:

* ``eager-fp32``: what the torch backend ran before, NCHW float32 eager (cuDNN may use
  TF32 for convolutions, torch's default: ``torch.backends.cudnn.allow_tf32`` is recorded);
* ``eager-<bf16|fp16>-cl``: autocast and channels-last, eager (what the graphs add is the
  step from this row to the next);
* ``fast``: the backend's default on CUDA: autocast, channels-last, a CUDA graph per
  batch size (:class:`service.backends.torch_fast.ClosedFormRunner`);
* ``onnxruntime-cuda``: the exported graph in ONNX Runtime's CUDA execution provider,
  when this onnxruntime has it (``onnxruntime-gpu``), inputs and outputs bound on the
  device (I/O binding), else a row saying why it was skipped.

Each case reports ``model_ms`` (device input -> device outputs, synchronised: median and
p90 over a time budget after warm-up; throughput = batch / median) and ``call_ms`` (the
runner's full call from a numpy batch to numpy outputs, as the backend does it: pinned
staging, copies both ways), and the ratio of each variant to ``eager-fp32`` in the same
run. Peak GPU memory per case (``torch.cuda.max_memory_allocated``) is recorded.

Section ``backend`` (``--models-dir``): the service's :class:`TorchBackend` on the models
of a manifest, ``gradcam`` through the closed form vs through pytorch-grad-cam (forward +
backward), batch 1 and 8: the latency a request's inference stage sees.

On a machine without CUDA the script runs a smoke configuration on the CPU (64 px, batch
1 and 2, a short budget) so that it can be tested; the JSON says ``"smoke": true``.

    uv run python -m benchmarks.bench_torch_gpu                      # GPU: the full run
    uv run python -m benchmarks.bench_torch_gpu --models-dir models   # plus the backend section
    uv run python -m benchmarks.bench_torch_gpu --smoke --out /tmp/t.json

Results go to ``--out`` (default ``benchmarks/results/torch_gpu.json``) with the command
line and the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmodel.networks import build_model
from service.backends.torch_fast import ClosedFormRunner, Precision, cuda_status

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "torch_gpu.json"


def _time(fn: Callable[[], object], budget_s: float, min_iters: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``fn`` calls (``fn`` synchronises itself) over ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_iters or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    return {
        "median_ms": round(1e3 * median, 3),
        "p90_ms": round(1e3 * p90, 3),
        "images_per_s": round(batch / median, 1),
        "iterations": len(times),
    }


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    ok, why = cuda_status()
    info["cuda"] = ok
    if ok:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        info["cuda_reason"] = why
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    return info


def _variants(cuda: bool) -> dict[str, dict[str, Any]]:
    """Runner options per variant name."""
    eager: dict[str, Any] = {"precision": "fp32", "channels_last": False, "cuda_graphs": False}
    if not cuda:
        return {"eager-fp32": eager, "cpu-channels-last": {**eager, "channels_last": True}}
    low = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {
        "eager-fp32": eager,
        f"eager-{low}-cl": {"precision": low, "channels_last": True, "cuda_graphs": False},
        "fast": {"precision": "auto", "channels_last": True, "cuda_graphs": True},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_runner(
    name: str,
    options: dict[str, Any],
    resolution: int,
    batch: int,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(args.architecture).eval().to(device)
    precision: Precision = options["precision"]
    runner = ClosedFormRunner(
        model,
        resolution,
        device,
        precision=precision,
        channels_last=options["channels_last"],
        cuda_graphs=options["cuda_graphs"],
    )
    rng = np.random.default_rng(0)
    host = rng.standard_normal((batch, 1, resolution, resolution)).astype(np.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_fn: Callable[[], object]
    if runner.cuda_graphs:
        graph = runner.graph_for(batch)  # this bucket only (prepare would capture 1..batch)
        with torch.inference_mode():
            graph.inp.copy_(torch.from_numpy(host))

        def model_fn() -> None:
            graph.graph.replay()
            _sync(device)

    else:
        x = torch.from_numpy(host).to(device)
        if runner.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def model_fn() -> None:
            with torch.inference_mode():
                runner.forward(x)
            _sync(device)

    row: dict[str, Any] = {
        "variant": name,
        "label": runner.label,
        "resolution": resolution,
        "batch": batch,
        **options,
    }
    row["model_ms"] = _summary(_time(model_fn, args.budget_s, args.min_iters, args.warmup), batch)
    row["call_ms"] = _summary(
        _time(lambda: runner(host), args.budget_s, args.min_iters, args.warmup), batch
    )
    if device.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    runner.close()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_onnxruntime(
    resolution: int, batches: list[int], args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """``onnxruntime-cuda`` rows, or one skipped row saying why."""
    try:
        import onnxruntime as ort
    except ImportError:
        return [
            {"variant": "onnxruntime-cuda", "resolution": resolution, "skipped": "no onnxruntime"}
        ]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        why = (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
        return [{"variant": "onnxruntime-cuda", "resolution": resolution, "skipped": why}]
    from training.export import export_onnx

    torch.manual_seed(0)
    path = export_onnx(
        build_model(args.architecture).eval(), resolution, work / f"m{resolution}.onnx"
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        host = rng.standard_normal((batch, 1, resolution, resolution)).astype(np.float32)
        binding = session.io_binding()
        binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(host, "cuda", 0))
        for output in ("logit", "cam", "embedding"):
            binding.bind_output(output, "cuda")

        def model_fn(b: Any = binding) -> None:
            session.run_with_iobinding(b)
            b.synchronize_outputs()

        def call_fn(h: np.ndarray = host) -> None:
            session.run(None, {"image": h})

        rows.append(
            {
                "variant": "onnxruntime-cuda",
                "label": f"onnxruntime:{session.get_providers()[0]}",
                "resolution": resolution,
                "batch": batch,
                "model_ms": _summary(
                    _time(model_fn, args.budget_s, args.min_iters, args.warmup), batch
                ),
                "call_ms": _summary(
                    _time(call_fn, args.budget_s, args.min_iters, args.warmup), batch
                ),
            }
        )
    return rows


def bench_backend(
    models_dir: Path, device_name: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """TorchBackend ``gradcam``: closed form vs pytorch-grad-cam, on a manifest's models."""
    from cxrmodel.manifest import read_manifest
    from cxrmodel.vocab import Device, FileKind
    from service.backends.torch import TorchBackend

    rows = []
    device = Device(device_name)
    for resolution, entry in sorted(read_manifest(models_dir).by_resolution().items()):
        pt = entry.path_of(FileKind.PT, models_dir)
        backends = {
            "closed-form": TorchBackend(
                pt, resolution, device=device, intra_op_threads=args.threads
            ),
            "pytorch-grad-cam": TorchBackend(
                pt,
                resolution,
                device=device,
                intra_op_threads=args.threads,
                closed_form_gradcam=False,
            ),
        }
        rng = np.random.default_rng(1)
        for batch in args.backend_batches:
            x = rng.standard_normal((batch, 1, resolution, resolution)).astype(np.float32)
            case: dict[str, Any] = {"resolution": resolution, "batch": batch}
            for name, backend in backends.items():
                backend.warm(
                    (batch,), entry.outputs.embedding[-1] if entry.outputs.embedding else 0
                )
                times = _time(lambda b=backend, x=x: b.infer(x), args.budget_s, args.min_iters, 1)
                case[name] = {"backend": backend.name, **_summary(times, batch)}
            case["pytorch_grad_cam_over_closed_form"] = round(
                case["pytorch-grad-cam"]["median_ms"] / case["closed-form"]["median_ms"], 2
            )
            rows.append(case)
        for backend in backends.values():
            backend.close()
    return rows


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant's median model and call time over ``eager-fp32``'s, same case."""
    base = {(r["resolution"], r["batch"]): r for r in rows if r.get("variant") == "eager-fp32"}
    out = []
    for r in rows:
        b = base.get((r.get("resolution"), r.get("batch")))
        if b is None or r["variant"] == "eager-fp32" or "skipped" in r:
            continue
        out.append(
            {
                "variant": r["variant"],
                "resolution": r["resolution"],
                "batch": r["batch"],
                "model_speedup": round(b["model_ms"]["median_ms"] / r["model_ms"]["median_ms"], 2),
                "call_speedup": round(b["call_ms"]["median_ms"] / r["call_ms"]["median_ms"], 2),
            }
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--architecture", default="densenet121")
    p.add_argument("--resolutions", type=int, nargs="+", default=[224, 512, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--budget-s", type=float, default=1.5, help="timed seconds per case")
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models-dir", type=Path, default=None, help="adds the backend section")
    p.add_argument("--backend-batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-onnxruntime", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized configuration")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    cuda, _ = cuda_status()
    smoke = args.smoke or not cuda
    if smoke:  # also what runs without a GPU: tiny, so the script can be tested anywhere
        args.resolutions, args.batches = [64], [1, 2]
        args.budget_s, args.min_iters, args.warmup = min(args.budget_s, 0.2), 2, 1
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True  # for every variant, as the fast path sets it
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-torch-gpu-") as tmp:
        for resolution in args.resolutions:
            for batch in args.batches:
                for name, options in _variants(cuda).items():
                    row = bench_runner(name, options, resolution, batch, device, args)
                    rows.append(row)
                    print(
                        f"{resolution:5d} px  batch {batch:3d}  {name:18s} model "
                        f"{row['model_ms']['median_ms']:9.3f} ms  call "
                        f"{row['call_ms']['median_ms']:9.3f} ms",
                        flush=True,
                    )
            if cuda and not args.no_onnxruntime:
                for row in bench_onnxruntime(resolution, args.batches, args, Path(tmp)):
                    rows.append(row)
                    print(
                        row
                        if "skipped" in row
                        else f"{resolution} {row['batch']} ort {row['model_ms']}"
                    )
    result: dict[str, Any] = {
        "command": " ".join(["python", "-m", "benchmarks.bench_torch_gpu", *argv]),
        "smoke": smoke,
        "device": device.type,
        "hardware": hardware(),
        "architecture": args.architecture,
        "budget_s": args.budget_s,
        "model": rows,
        "ratios_over_eager_fp32": _ratios(rows),
    }
    if args.models_dir is not None:
        result["backend"] = bench_backend(args.models_dir, device.type, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run(parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
