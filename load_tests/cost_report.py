"""Cost versus benefit per resolution, from ONE cost sweep (``load_tests/sweep.py``).

Per resolution, the step (concurrency) reported is the one with the highest throughput
among the steps with no errors other than 503s (``status.other == 0``; a 503 already
costs throughput, since only 200s count); a tie goes to the lower concurrency (lower
latency at the same throughput). From that step:

* throughput per core = ``throughput_rps / cores``;
* cost per 1,000 studies on CPU = ``cores x price_core_hour / (throughput_rps x 3600)
  x 1000`` (the whole box is billed while it serves at that rate);
* cost per 1,000 studies on GPU = ``price_gpu_hour / (throughput_rps x 3600) x 1000`` when
  the sweep's backend ran on a GPU (CUDA or TensorRT), else n/a;

beside the model's test-set AUROCs from the sweep rows (the manifest's, in and out of
distribution) and, where the resolution study has that resolution, the study's AUROCs and
localisation (mIoU, box accuracy). Writes ``report.md``, ``cost.json`` and ``pareto.png``
(cost on a log x axis, in-distribution AUROC on y, the Pareto frontier drawn) into a NEW
folder per run, ``<out-root>/<UTC time>-<sweep sha256[:8]>/``, or into ``--out``.

    python -m load_tests.cost_report --sweep load_tests/results/sweep.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DESCRIPTION = "Cost per 1,000 studies versus AUROC per resolution, from one cost sweep."
SELECTION_RULE = (
    "per resolution, the concurrency step with the highest throughput among those with no "
    "errors other than 503 (status.other == 0); ties go to the lower concurrency"
)
CPU_FORMULA = "cores x price_core_hour / (throughput_rps x 3600) x 1000"
GPU_FORMULA = "price_gpu_hour / (throughput_rps x 3600) x 1000"
GPU_MARKERS = ("cuda", "tensorrt", "gpu")  # in a row's model.backend, e.g. onnxruntime:CUDA...
FILES = ("report.md", "cost.json", "pareto.png", "sweep.json")


class ReportError(Exception):
    """Stops the report with a one-line message (exit 2)."""


@dataclass(frozen=True)
class Prices:
    core_hour: float
    gpu_hour: float
    cores: float
    cores_source: str


def cost_per_1000_cpu(throughput_rps: float, cores: float, price_core_hour: float) -> float:
    """Dollars (or whatever the price is in) per 1,000 studies on ``cores`` CPU cores."""
    if throughput_rps <= 0:
        return math.inf
    return cores * price_core_hour / (throughput_rps * 3600) * 1000


def cost_per_1000_gpu(throughput_rps: float, price_gpu_hour: float) -> float:
    """Per 1,000 studies on one GPU billed by the hour."""
    if throughput_rps <= 0:
        return math.inf
    return price_gpu_hour / (throughput_rps * 3600) * 1000


def on_gpu(row: dict[str, Any]) -> bool:
    backend = str((row.get("model") or {}).get("backend") or "").lower()
    return any(marker in backend for marker in GPU_MARKERS)


def best_step(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The step :data:`SELECTION_RULE` picks among one resolution's rows (None: none is
    clean)."""
    clean = [r for r in rows if r["status"].get("other", 0) == 0 and r["throughput_rps"] > 0]
    if not clean:
        return None
    return max(clean, key=lambda r: (r["throughput_rps"], -r["concurrency"]))


def pareto_front(points: Sequence[tuple[Any, float, float]]) -> list[Any]:
    """Keys of the points ``(key, cost, auroc)`` that no other point dominates (costs no
    more and has at least the AUROC, one of them strictly), cheapest first. Points with an
    infinite or missing cost or AUROC are not candidates."""
    usable = [p for p in points if p[1] is not None and math.isfinite(p[1]) and p[2] is not None]
    front: list[Any] = []
    best, best_cost = -math.inf, math.nan
    for key, cost, auroc in sorted(usable, key=lambda p: (p[1], -p[2])):
        # cheaper points came first: only a better AUROC earns a place, or a tie with the
        # last one kept (identical points do not dominate each other)
        if auroc > best or (auroc == best and cost == best_cost):
            front.append(key)
            best, best_cost = auroc, cost
    return front


def study_numbers(study: dict[str, Any], resolution: int, downsample: str) -> dict[str, Any]:
    """The study's AUROCs and localisation at ``resolution`` (empty when it has none):
    ``test`` is its hold-out (in distribution), any other set out of distribution."""
    run = (study.get("runs") or {}).get(downsample, {}).get(str(resolution))
    if not run:
        return {}

    def value(block: Any) -> float | None:
        return float(block["value"]) if isinstance(block, dict) and "value" in block else None

    out: dict[str, Any] = {"downsample": downsample, "sets": {}}
    for name, numbers in run.items():
        auroc = numbers.get("auroc") or {}
        loc = numbers.get("localisation") or {}
        out["sets"][name] = {
            "n": numbers.get("n"),
            "auroc": auroc.get("auc"),
            "auroc_ci": [auroc.get("low"), auroc.get("high")],
            "miou": value(loc.get("miou")),
            "percent_in": value(loc.get("percent_in")),
            "box_accuracy": value(loc.get("box_accuracy")),
        }
    return out


def build_rows(
    sweep: dict[str, Any],
    prices: Prices,
    *,
    id_set: str,
    ood_set: str,
    study: dict[str, Any] | None,
    downsample: str,
) -> list[dict[str, Any]]:
    """One row per resolution of the sweep, in resolution order."""
    by_resolution: dict[int, list[dict[str, Any]]] = {}
    for row in sweep["rows"]:
        by_resolution.setdefault(int(row["resolution"]), []).append(row)
    out = []
    for resolution in sorted(by_resolution):
        steps = by_resolution[resolution]
        step = best_step(steps)
        first = step or steps[0]
        gpu = on_gpu(first)
        entry: dict[str, Any] = {
            "resolution": resolution,
            "model": first.get("model", {}),
            "device": "gpu" if gpu else "cpu",
            "steps": [
                {
                    "concurrency": s["concurrency"],
                    "throughput_rps": s["throughput_rps"],
                    "status": s["status"],
                }
                for s in steps
            ],
            "chosen": None,
            "auroc_id": first.get("auroc", {}).get(id_set),
            "auroc_ood": first.get("auroc", {}).get(ood_set),
            "study": study_numbers(study, resolution, downsample) if study else {},
        }
        if step is not None:
            rps = float(step["throughput_rps"])
            cpu = cost_per_1000_cpu(rps, prices.cores, prices.core_hour)
            entry["chosen"] = {
                "concurrency": step["concurrency"],
                "throughput_rps": rps,
                "throughput_per_core": rps / prices.cores,
                "latency_p50_ms": step["latency_ms"].get("p50"),
                "latency_p95_ms": step["latency_ms"].get("p95"),
                "status": step["status"],
                "mean_batch_size": step.get("mean_batch_size"),
                "cost_per_1000_cpu": cpu,
                "cost_per_1000_gpu": cost_per_1000_gpu(rps, prices.gpu_hour) if gpu else None,
            }
        out.append(entry)
    costs = [(r["resolution"], _plotted_cost(r), r["auroc_id"]) for r in out]
    front = set(pareto_front(costs))
    for r in out:
        r["pareto"] = r["resolution"] in front
    return out


def _plotted_cost(row: dict[str, Any]) -> float:
    """The cost the plot and the frontier use: per GPU-hour on a GPU sweep, else CPU."""
    chosen = row["chosen"]
    if chosen is None:
        return math.inf
    gpu = chosen["cost_per_1000_gpu"]
    return float(gpu if gpu is not None else chosen["cost_per_1000_cpu"])


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return spec.format(value)


def _money(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def render_table(rows: Sequence[dict[str, Any]], id_set: str, ood_set: str) -> str:
    header = [
        "resolution",
        "clients",
        "req/s",
        "req/s/core",
        "p50 ms",
        "p95 ms",
        "cost / 1,000 (CPU)",
        "cost / 1,000 (GPU)",
        f"AUROC {id_set}",
        f"AUROC {ood_set}",
        "study AUROC test",
        "study AUROC ext.",
        "study mIoU test",
        "study box acc. test",
        "Pareto",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        c = r["chosen"] or {}
        sets = (r["study"] or {}).get("sets", {})
        test = sets.get("test", {})
        external: dict[str, Any] = next((v for k, v in sorted(sets.items()) if k != "test"), {})
        gpu = c.get("cost_per_1000_gpu")
        cells = [
            str(r["resolution"]),
            str(c.get("concurrency", "no clean step")),
            _fmt(c.get("throughput_rps"), "{:.2f}"),
            _fmt(c.get("throughput_per_core"), "{:.2f}"),
            _fmt(c.get("latency_p50_ms"), "{:.1f}"),
            _fmt(c.get("latency_p95_ms"), "{:.1f}"),
            _money(c.get("cost_per_1000_cpu")),
            _money(gpu) if gpu is not None else "n/a",
            _fmt(r["auroc_id"]),
            _fmt(r["auroc_ood"]),
            _fmt(test.get("auroc")),
            _fmt(external.get("auroc")),
            _fmt(test.get("miou")),
            _fmt(test.get("box_accuracy"), "{:.2f}"),
            "yes" if r["pareto"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path, id_set: str, ood_set: str) -> None:
    """Cost per 1,000 (log x) against AUROC: in distribution (the frontier's) and, hollow,
    out of distribution for context."""
    import matplotlib  # lazily: --help and the arithmetic need no plotting stack

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r, _plotted_cost(r)) for r in rows if math.isfinite(_plotted_cost(r))]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    id_points = [(r, x) for r, x in points if r["auroc_id"] is not None]
    ax.scatter(
        [x for _, x in id_points],
        [r["auroc_id"] for r, _ in id_points],
        s=50,
        color="tab:blue",
        zorder=3,
        label=f"AUROC {id_set} (in distribution)",
    )
    for r, x in id_points:
        ax.annotate(
            f"{r['resolution']} px",
            (x, r["auroc_id"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=9,
        )
    ood_points = [(r, x) for r, x in points if r["auroc_ood"] is not None]
    if ood_points:
        ax.scatter(
            [x for _, x in ood_points],
            [r["auroc_ood"] for r, _ in ood_points],
            s=40,
            facecolors="none",
            edgecolors="tab:orange",
            zorder=3,
            label=f"AUROC {ood_set} (out of distribution)",
        )
        for r, x in ood_points:
            ax.annotate(
                f"{r['resolution']}",
                (x, r["auroc_ood"]),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
                color="tab:orange",
            )
    front = sorted(((x, r["auroc_id"]) for r, x in id_points if r["pareto"]), key=lambda p: p[0])
    if front:
        # a staircase: from each frontier point, its AUROC holds until a cheaper-to-beat one
        xs, ys = [front[0][0]], [front[0][1]]
        for x, y in front[1:]:
            xs += [x, x]
            ys += [ys[-1], y]
        ax.plot(xs, ys, color="tab:blue", linestyle="--", linewidth=1, label="Pareto frontier")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)  # room for the labels of the points at the edges
    gpu = any(r["chosen"] and r["chosen"]["cost_per_1000_gpu"] is not None for r in rows)
    ax.set_xlabel(f"cost per 1,000 studies ({'GPU' if gpu else 'CPU'}-hours priced, log)")
    ax.set_ylabel("test-set AUROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("sharpcxr: cost versus AUROC per resolution")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def new_run_dir(root: Path, sweep_bytes: bytes, now: datetime) -> Path:
    """A folder that did not exist: ``<root>/<UTC time>-<sweep sha[:8]>`` (``-2``, ``-3``...
    when two runs land in the same second), created here, so no run overwrites another."""
    stem = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{hashlib.sha256(sweep_bytes).hexdigest()[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ReportError(f"no free folder name under {root} for {stem}")


def _load(path: Path, what: str) -> tuple[bytes, dict[str, Any]]:
    try:
        data = path.read_bytes()
        loaded = json.loads(data)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ReportError(f"{path} is not a {what} (a JSON object)")
    return data, loaded


def _prices(args: argparse.Namespace, sweep: dict[str, Any]) -> Prices:
    if args.cores is not None:
        cores, source = float(args.cores), "--cores"
    elif isinstance(recorded := sweep.get("cores", sweep.get("cpu_count")), int | float):
        cores, source = float(recorded), "the sweep"
    else:
        # the sweep does not record its machine: this one is a guess, say so in the report
        cores, source = float(os.cpu_count() or 1), "os.cpu_count() of the machine writing this"
    return Prices(args.price_core_hour, args.price_gpu_hour, cores, source)


def markdown_report(
    report: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    command: str,
    id_set: str,
    ood_set: str,
) -> str:
    p, s = report["prices"], report["sweep"]
    gpu = any(r["device"] == "gpu" for r in rows)
    study = report["study"]
    lines = [
        "# Cost versus benefit per resolution",
        "",
        f"Generated {report['generated_utc']} by `{command}`.",
        "",
        f"Sweep: `{s['path']}` (sha256 `{s['sha256'][:12]}`), {s['url']}, started "
        f"{s['started_utc']}; {s['image']}, {s['requests_per_step']} requests per step, "
        f"explain={s['explain']}.",
        f"Study: {f'`{study}`' if study else 'none'} (downsampling `{report['downsample']}`; "
        "its models are the study's fold ensembles, not the served ones: its columns are the "
        "resolution's trend, not this model's number).",
        "",
        f"- **Step:** {SELECTION_RULE}.",
        f"- **Cores:** {p['cores']:g} (from {p['cores_source']}); core-hour "
        f"{p['price_core_hour']:g}, GPU-hour {p['price_gpu_hour']:g}.",
        f"- **CPU cost per 1,000 studies** = {CPU_FORMULA}.",
        f"- **GPU cost per 1,000 studies** = {GPU_FORMULA}"
        + ("." if gpu else " — n/a: the sweep's backend ran on the CPU."),
        f"- **AUROC:** `{id_set}` (in distribution) and `{ood_set}` (out of distribution) are "
        "the served model's test sets from the manifest (`GET /v1/models`, in the sweep rows).",
        "- **Pareto:** no other resolution is both no more expensive and at least as accurate "
        f"(AUROC `{id_set}`), one of them strictly.",
        "",
        render_table(rows, id_set, ood_set),
        "![cost versus AUROC](pareto.png)",
        "",
        "Caveats: the sweep's client shares the machine with the service unless it was "
        "pointed elsewhere, so the throughput is a lower bound on what the cores serve; "
        "a few requests per step make the step choice noisy between close steps.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.cost_report", description=DESCRIPTION)
    p.add_argument("--sweep", type=Path, required=True, help="a load_tests.sweep JSON report")
    p.add_argument(
        "--study",
        type=Path,
        default=None,
        help="a study's results.json, e.g. reports/phantom-compact/results.json",
    )
    p.add_argument("--study-downsample", default="standard", help="the study's run to use")
    p.add_argument("--price-core-hour", type=float, default=0.05, help="default 0.05")
    p.add_argument("--price-gpu-hour", type=float, default=2.5, help="default 2.5")
    p.add_argument(
        "--cores",
        type=float,
        default=None,
        help="cores the service had (default: the sweep's, else os.cpu_count())",
    )
    p.add_argument("--id-set", default="test_site_a", help="in-distribution AUROC set")
    p.add_argument("--ood-set", default="test_site_b", help="out-of-distribution AUROC set")
    p.add_argument(
        "--out-root",
        type=Path,
        default=Path("reports/cost"),
        help="a new <UTC time>-<sweep sha> folder under it per run",
    )
    p.add_argument("--out", type=Path, default=None, help="write into this folder instead")
    p.add_argument("--force", action="store_true", help="with --out: overwrite its files")
    args = p.parse_args(argv)
    if args.price_core_hour < 0 or args.price_gpu_hour < 0 or (args.cores or 1) <= 0:
        p.error("prices >= 0 and --cores > 0 please")
    if args.force and args.out is None:
        p.error("--force only applies to --out (run folders are always new)")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    sweep_bytes, sweep = _load(args.sweep, "sweep")
    if not isinstance(sweep.get("rows"), list) or not sweep["rows"]:
        raise ReportError(f"{args.sweep} has no sweep rows")
    study = _load(args.study, "study results")[1] if args.study else None
    prices = _prices(args, sweep)
    rows = build_rows(
        sweep,
        prices,
        id_set=args.id_set,
        ood_set=args.ood_set,
        study=study,
        downsample=args.study_downsample,
    )
    now = datetime.now(UTC)
    if args.out is not None:
        if args.out.exists() and not args.force:
            raise ReportError(f"{args.out} exists; pass --force to overwrite its report")
        args.out.mkdir(parents=True, exist_ok=True)
        out = Path(args.out)
    else:
        out = new_run_dir(args.out_root, sweep_bytes, now)
    command = "python -m load_tests.cost_report " + shlex.join(argv)
    report = {
        "generated_utc": now.isoformat(timespec="seconds"),
        "command": command,
        "sweep": {
            "path": str(args.sweep),
            "sha256": hashlib.sha256(sweep_bytes).hexdigest(),
            "url": sweep.get("url"),
            "started_utc": sweep.get("started_utc"),
            "image": "{rows}x{columns} {bits_stored}-bit phantom".format(**sweep["image"])
            if isinstance(sweep.get("image"), dict)
            else None,
            "requests_per_step": sweep.get("requests_per_step"),
            "explain": sweep.get("explain"),
        },
        "study": str(args.study) if args.study else None,
        "downsample": args.study_downsample,
        "prices": {
            "price_core_hour": prices.core_hour,
            "price_gpu_hour": prices.gpu_hour,
            "cores": prices.cores,
            "cores_source": prices.cores_source,
        },
        "rule": SELECTION_RULE,
        "formulas": {"cpu": CPU_FORMULA, "gpu": GPU_FORMULA},
        "auroc_sets": {"in_distribution": args.id_set, "out_of_distribution": args.ood_set},
        "rows": rows,
    }
    # the sweep travels with its report, so a folder stands on its own after the sweep file
    # it came from is overwritten by the next run
    if not (out / "sweep.json").exists() or (out / "sweep.json").resolve() != args.sweep.resolve():
        (out / "sweep.json").write_bytes(sweep_bytes)
    (out / "cost.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (out / "report.md").write_text(
        markdown_report(report, rows, command, args.id_set, args.ood_set)
    )
    plot_pareto(rows, out / "pareto.png", args.id_set, args.ood_set)
    sys.stdout.write(render_table(rows, args.id_set, args.ood_set))
    return out


def _finite(value: Any) -> Any:
    """JSON has no infinity: a cost with no throughput behind it is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        out = run(args, argv)
    except ReportError as exc:
        sys.stderr.write(f"cost_report: {exc}\n")
        return 2
    sys.stderr.write(f"cost_report: wrote {out}/{{{','.join(FILES)}}}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
