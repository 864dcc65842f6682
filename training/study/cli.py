"""``sharpcxr study``: every :class:`StudyConfig` field is a flag (lists comma-separated).

sharpcxr study                                   # the CPU phantom study (make study)
sharpcxr study --downsamples standard,blurpool,flc
sharpcxr study --report-only                     # re-analyse finished runs
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import sys
import typing

from training.cli import flag_type, named_roots
from training.study.config import StudyConfig

logger = logging.getLogger(__name__)

_HELP = {
    "name": "report folder name: reports/NAME, runs in RUNS_DIR/NAME",
    "data_root": "development data (SIIM layout etc.); default: phantoms written to DATA_DIR",
    "resolutions": "comma-separated training resolutions",
    "downsamples": "comma-separated: standard, blurpool, flc, asap (the anti-aliasing axis)",
    "architecture": "compact (CPU) | densenet121",
    "test_fraction": "patient-level in-distribution test hold-out of the development data",
    "epochs": "epochs per fold, the same at every resolution",
    "hpo_trials": "> 0: Optuna per resolution (fold 0), best parameters for every fold",
    "shift_ablation": "generated phantoms: score each site-b factor alone (default: on)",
}


def _tuple_parser(item: type) -> typing.Callable[[str], tuple[typing.Any, ...]]:
    def parse(text: str) -> tuple[typing.Any, ...]:
        return tuple(item(v.strip()) for v in text.split(",") if v.strip())

    return parse


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(StudyConfig)
    for f in dataclasses.fields(StudyConfig):
        if f.name == "external":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default: typing.Any = f.default
        shown: typing.Any = default
        choices = None
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            # Enum items stay strings here; StudyConfig turns them into the enum (and
            # names the allowed values when one is wrong).
            kind: typing.Any = _tuple_parser(str if issubclass(item, enum.Enum) else item)
            shown = ",".join(map(str, default))
        else:
            kind, _ = flag_type(hint)
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                kind, choices, default = str, [m.value for m in kind], default.value
        flags = [flag, "--downsample"] if f.name == "downsamples" else [flag]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=_HELP.get(f.name))  # fmt: skip
            continue
        parser.add_argument(*flags, dest=f.name, type=kind, default=default, choices=choices,
                            help=f"{_HELP.get(f.name, '')} (default: {shown})")  # fmt: skip
    parser.add_argument("--external", action="append", default=[], metavar="NAME=ROOT",
                        help="an external (out-of-distribution) test set in the --dataset "
                             "format; repeatable")  # fmt: skip
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: analyse the finished runs and rewrite the report",
    )


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(StudyConfig)
              if f.name != "external"}  # fmt: skip
    return StudyConfig(**values, external=named_roots(args.external, "--external"))


def run_study_command(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as exc:
        print(f"sharpcxr study: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(cfg, report_only=args.report_only)
    except ValueError as exc:  # mixed runs, changed cases: the message says what to do
        print(f"sharpcxr study: {exc}", file=sys.stderr)
        return 1


def _run(cfg: StudyConfig, *, report_only: bool) -> int:
    if report_only:
        from training.study.report import write_report

        if not cfg.run_dir.exists():
            print(f"sharpcxr study: no finished runs under {cfg.run_dir}", file=sys.stderr)
            return 1
        out = write_report(cfg)
    else:
        from training.study.runner import run_study

        out = run_study(cfg)
    print(f"report: {out / 'report.md'}")
    return 0
