"""``sharpcxr train`` and ``sharpcxr export``: arguments and handlers.

Every ``TrainConfig`` field is a flag (``--lr``, ``--max-epochs``, ...) whose default is
the protocol's; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path

from cxrmodel.resolution import RULE as RESOLUTION_RULE
from training.config import TrainConfig

logger = logging.getLogger(__name__)

_HELP = {
    "dataset": "phantoms | siim | nih | chexpert",
    "data_root": "dataset folder (SIIM layout for phantoms/siim)",
    "labels": "pneumothorax | all (NIH/CheXpert 14 findings)",
    "resolution": f"model input size R, {RESOLUTION_RULE} (64..1024 typical)",
    "architecture": "densenet121 | compact (small DenseNet for CPU demos)",
    "downsample": "standard | blurpool | flc | asap (internal anti-aliasing)",
    "pretrained": "local torchvision ImageNet state dict (nothing is downloaded)",
    "batch_size": "default: 64 at 64 px, 12 at 1024 px, 16 otherwise",
    "gradient_checkpointing": "auto (on at >= 768 px) | on | off",
    "time_budget_s": "stop after the epoch that crosses this many seconds",
    "keep": "best (by validation AUROC, the protocol) | last (the final epoch: best.pt is "
    "then the last epoch's model)",
    "warmup_fraction": "cosine schedule: the share of the run spent warming up",
    "lr_schedule": "plateau (the protocol) | cosine (warm-up, then decay to 0 at the end of "
    "the time budget, else of max_epochs; under torchrun max_epochs only)",
}


def flag_type(hint: object) -> tuple[type, bool]:
    """(argparse type, optional) for a dataclass field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False  # type: ignore[return-value]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("test_roots",):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, _ = flag_type(hints[f.name])
        default = f.default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=_HELP.get(f.name))  # fmt: skip
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            # Plain strings with choices (argparse lists them on a bad value); the config
            # turns them into the enum.
            parser.add_argument(
                flag,
                choices=[m.value for m in kind],
                default=default.value,
                help=f"{_HELP.get(f.name, '')} (default: {default.value})",
            )
        else:
            parser.add_argument(flag, type=kind, default=default,
                                help=f"{_HELP.get(f.name, '')} (default: {default})")  # fmt: skip
    parser.add_argument(
        "--test", action="append", default=[], metavar="NAME=ROOT",
        help="a test set evaluated on the best checkpoint at the end (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--hpo-trials",
        type=int,
        default=0,
        help="> 0: Optuna search over lr, weight decay, augmentation",
    )
    parser.add_argument(
        "--hpo-storage",
        default=None,
        help="Optuna RDB URL (sqlite:///hpo.db, postgresql://...) to share a study",
    )
    parser.add_argument("--hpo-study", default=None, help="study name (workers share it)")


def named_roots(items: list[str], flag: str) -> dict[str, str]:
    """``["NAME=ROOT", ...]`` -> ``{NAME: ROOT}``; ``ValueError`` naming ``flag`` otherwise."""
    roots = {}
    for item in items:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise ValueError(f"{flag} takes NAME=ROOT, got {item!r}")
        roots[name] = root
    return roots


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name != "test_roots"}  # fmt: skip
    return TrainConfig(**values, test_roots=named_roots(args.test, "--test"))


def run_train(args: argparse.Namespace) -> int:
    from training.publish import evaluate_checkpoint

    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as exc:
        print(f"sharpcxr train: {exc}", file=sys.stderr)
        return 2
    if args.hpo_trials > 0:
        from training.hpo import best_summary, run_search

        study = run_search(cfg, args.hpo_trials, storage=args.hpo_storage,
                           study_name=args.hpo_study, seed=cfg.seed)  # fmt: skip
        print(json.dumps(best_summary(study), indent=2))
        return 0
    from training.loop import train

    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    summary: dict[str, object] = {
        "best_checkpoint": str(result.best_checkpoint),
        "best_val_auroc": result.best_val_auroc,
        "best_epoch": result.best_epoch,
        "threshold": result.threshold,
        "epochs_run": result.epochs_run,
        "stopped_because": result.stopped_because,
    }
    if cfg.test_roots and result.best_checkpoint.exists():
        summary["test"] = evaluate_checkpoint(result.best_checkpoint, cfg.test_roots)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a best.pt written by `sharpcxr train`")
    parser.add_argument("--out", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--name", default=None, help="model name (default from the config)")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument(
        "--tensorrt",
        choices=["auto", "on", "off"],
        default="auto",
        help="TensorRT plan: auto = when TensorRT and a GPU are present",
    )
    parser.add_argument(
        "--int8-calibration",
        type=int,
        default=0,
        metavar="N",
        help="build an INT8 plan calibrated on N training inputs",
    )


def run_export(args: argparse.Namespace) -> int:
    from training.publish import publish

    if not args.checkpoint.exists():
        print(f"sharpcxr export: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 1
    try:
        entry = publish(args.checkpoint, args.out, name=args.name, version=args.version,
                        tensorrt=args.tensorrt, int8_calibration=args.int8_calibration)  # fmt: skip
    except RuntimeError as exc:  # e.g. --tensorrt on without TensorRT
        print(f"sharpcxr export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: entry[k] for k in ("name", "resolution", "files", "threshold")},
                     indent=2))  # fmt: skip
    return 0
