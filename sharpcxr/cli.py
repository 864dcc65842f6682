"""The ``sharpcxr`` command line: one sub-command per job (see docs/DESIGN.md, Command line).

Each sub-command lives next to the code it drives; this module only wires them up, so
importing it and building the parser stay cheap: ``sharpcxr --help`` and every
sub-command's ``--help`` import neither torch nor the training loop (heavy imports happen
inside the handlers; ``tests/test_cli.py`` checks it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cxrmodel.resolution import RULE as RESOLUTION_RULE
from cxrmodel.resolution import check_resolution

EXIT_OK = 0
EXIT_REFUSED = 1  # the input was refused (not DICOM, corrupt, cannot be assessed)
EXIT_USAGE = 2  # argparse's own code for bad arguments


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="print a DICOM file's header facts as JSON and write the exact model input",
        description=(
            "Decode FILE exactly as the service does. Prints the header facts (no patient "
            "identifiers) as JSON; with --out, writes the model input at --resolution as "
            "an 8-bit PNG. Exits 1 with a one-line reason when the file is refused."
        ),
    )
    p.add_argument("file", type=Path, help="a DICOM file (Part 10 or a bare dataset)")
    p.add_argument(
        "--resolution", type=int, default=1024, help=f"model input size R, {RESOLUTION_RULE}"
    )
    p.add_argument("--out", type=Path, help="write the R x R model input here as PNG")
    p.add_argument(
        "--max-pixels", type=int, default=None, help="pixel budget (default: 36,000,000)"
    )
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from PIL import Image

    from imaging.dicom import DEFAULT_MAX_PIXELS, read_dicom
    from imaging.errors import ImagingError
    from imaging.preprocess import model_input_to_display, preprocess

    try:
        check_resolution(args.resolution)
    except ValueError as exc:
        print(f"sharpcxr inspect: --resolution: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"sharpcxr inspect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        decoded = read_dicom(data, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    except ImagingError as exc:
        print(f"sharpcxr inspect: refused ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    model_input = preprocess(decoded.pixels, args.resolution)
    g = model_input.geometry
    report = {
        "file_bytes": len(data),
        "header": decoded.facts.to_dict(),
        "model_input": {
            "resolution": g.resolution,
            "content_rows": g.content_rows,
            "content_columns": g.content_columns,
            "offset_y": g.offset_y,
            "offset_x": g.offset_x,
            "png": str(args.out) if args.out else None,
        },
        "timings_ms": {k: round(v, 2) for k, v in decoded.timings_ms.items()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(model_input_to_display(model_input.image), mode="L").save(args.out)
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _add_phantoms(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from imaging.phantoms import add_phantoms_arguments, run_phantoms

    p = sub.add_parser(
        "phantoms",
        help="write a synthetic chest X-ray dataset (DICOM + train-rle.csv, SIIM-ACR layout)",
        description="Synthetic CXR phantoms with pneumothoraces and exact masks.",
    )
    add_phantoms_arguments(p)
    p.set_defaults(handler=run_phantoms)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from training.cli import add_train_arguments, run_train

    p = sub.add_parser(
        "train",
        help="train one model at one resolution (the published protocol by default)",
        description="Train a pneumothorax classifier; writes OUT_DIR/best.pt and last.pt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(handler=run_train)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from training.cli import add_export_arguments, run_export

    p = sub.add_parser(
        "export",
        help="write ONNX (and a TensorRT plan where available) and update the manifest",
        description="Export a checkpoint for serving and record it in OUT/manifest.json.",
    )
    add_export_arguments(p)
    p.set_defaults(handler=run_export)


def _add_study(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from training.study.cli import add_study_arguments, run_study_command

    p = sub.add_parser(
        "study",
        help="the resolution study: train/evaluate across resolutions, write a report",
        description=(
            "k-fold training at each resolution (and downsampling), evaluation on a hold-out "
            "and external sets, statistics, figures: reports/NAME/report.md. Resumable."
        ),
    )
    add_study_arguments(p)
    p.set_defaults(handler=run_study_command)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the inference service (settings from SHARPCXR_* environment variables)",
        description="Serve the models of SHARPCXR_MODELS_DIR (default models/) over HTTP.",
    )
    p.add_argument("--host", default=None, help="bind address (default SHARPCXR_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default SHARPCXR_PORT, 8000)")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from service.server import serve

    return serve(host=args.host, port=args.port)


def _add_triton_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "triton-export",
        help="write a Triton model repository (config.pbtxt + model.onnx per resolution)",
        description=(
            "One Triton model sharpcxr_<R> per resolution of MODELS_DIR/manifest.json: "
            "config.pbtxt (onnxruntime_onnx, dynamic batching) and 1/model.onnx, after "
            "checking each file's sha256 and its graph against the manifest. Exits 1 with a "
            "one-line reason when a model is refused or a model folder exists (see --force)."
        ),
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="default: models")
    p.add_argument("--out", type=Path, default=Path("triton_repo"), help="default: triton_repo")
    p.add_argument("--max-batch-size", type=int, default=8, help="default: 8, as the service")
    p.add_argument(
        "--max-queue-delay-us", type=int, default=5000, help="default: 5000, as the service"
    )
    p.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    p.add_argument("--gpu", action="store_true", help="KIND_GPU instances (default KIND_CPU)")
    p.add_argument("--link", action="store_true", help="hard-link model.onnx instead of copying")
    p.add_argument("--force", action="store_true", help="replace existing model folders")
    p.set_defaults(handler=_run_triton_export)


def _run_triton_export(args: argparse.Namespace) -> int:
    from cxrmodel.manifest import ModelFileError
    from sharpcxr.triton import export_triton_repository

    try:
        written = export_triton_repository(
            args.models_dir,
            args.out,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            instance_count=args.instances,
            kind="KIND_GPU" if args.gpu else "KIND_CPU",
            link=args.link,
            force=args.force,
        )
    except (ModelFileError, FileExistsError, ValueError) as exc:
        print(f"sharpcxr triton-export: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for path in written:
        print(path)
    print(f"sharpcxr triton-export: see {args.out / 'README.md'}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharpcxr", description="Resolution-aware chest X-ray AI (see README.md)."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_phantoms(sub)
    _add_inspect(sub)
    _add_train(sub)
    _add_export(sub)
    _add_study(sub)
    _add_serve(sub)
    _add_triton_export(sub)
    return parser


# what the `train` extra brings (pyproject.toml), by import name
TRAIN_EXTRA_MODULES = frozenset(
    {"torch", "torchvision", "onnx", "onnxscript", "pytorch_grad_cam", "optuna", "sklearn",
     "matplotlib", "tqdm"}
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        code: int = args.handler(args)
    except ModuleNotFoundError as exc:
        # The serving install (`sharpcxr[cpu]`) has no torch: training, export and the study
        # need the `train` extra. Say so instead of a traceback.
        if exc.name is None or exc.name.split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"sharpcxr {args.command}: needs {exc.name!r}, which this install does not have: "
            "`pip install 'sharpcxr[train]'` (uv: `uv sync --extra train`)",
            file=sys.stderr,
        )
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
