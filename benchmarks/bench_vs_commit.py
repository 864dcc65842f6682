"""This tree's service against an earlier commit's, in the same run, on the same models.

Issue #15's throughput goal is a ratio against the previous commit on the same machine:
a service is started from a ``git worktree`` of ``--base`` and one from this tree, one at
a time, on the same model directory and settings, and ``load_tests.sweep`` (this tree's)
runs the same steps against each. Rounds alternate base and head so drift of a shared
machine falls on both. Per concurrency: throughput, latency, the queue stage and the mean
batch size (medians over rounds), and head / base.

    uv run python -m benchmarks.bench_vs_commit --base 1e36bff --resolution 1024 \\
        --out benchmarks/results/vs_commit.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_service import server, service_argv
from benchmarks.bench_training import machine_info

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A detached checkout of ``commit`` in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="sharpcxr-base-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)  # fmt: skip


@contextmanager
def service(tree: Path, models: Path, resolution: int, log_dir: Path) -> Iterator[str]:
    """``python -m service`` from ``tree`` (its own code: the working directory comes first
    on ``sys.path``; this venv's packages)."""
    env = {"PYTHONPATH": str(tree), "SHARPCXR_MODELS_DIR": str(models),
           "SHARPCXR_RESOLUTIONS": str(resolution),
           "SHARPCXR_DATA_DIR": str(log_dir / f"data-{tree.name}")}  # fmt: skip
    with server(tree.name, service_argv(), env, log_dir, timeout_s=180, cwd=tree) as srv:
        yield srv.base_url


def sweep(url: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    subprocess.run(
        [sys.executable, "-m", "load_tests.sweep", "--url", url, "--resolutions",
         str(args.resolution), "--concurrency", args.concurrency, "--requests",
         str(args.requests), "--out", str(out)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"]
    return rows


def summarise(runs: dict[str, list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Medians over rounds per (tree, clients), and head / base."""

    def med(rows: list[dict[str, Any]], pick: Any) -> float:
        return float(statistics.median(pick(r) for r in rows))

    out = []
    steps = [row["concurrency"] for row in runs["head"][0]]
    for clients in steps:
        entry: dict[str, Any] = {"clients": clients}
        for tree in ("base", "head"):
            rows = [row for run in runs[tree] for row in run if row["concurrency"] == clients]
            entry[tree] = {
                "throughput_rps": med(rows, lambda r: r["throughput_rps"]),
                "p50_ms": med(rows, lambda r: r["latency_ms"]["p50"]),
                "queue_ms": med(rows, lambda r: r["timings_ms"]["queue"]),
                "mean_batch_size": med(rows, lambda r: r["mean_batch_size"] or 0.0),
            }
        entry["throughput_ratio"] = (
            entry["head"]["throughput_rps"] / entry["base"]["throughput_rps"]
        )
        out.append(entry)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# This tree vs {report['base']} ({report['measured_utc']})",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {report['machine']}. {report['resolution']} px, {report['requests']} "
        f"requests per step, {report['rounds']} rounds alternating base and head; medians.",
        "",
        "| clients | base req/s | head req/s | head / base | base queue ms | head queue ms "
        "| base mean batch | head mean batch | base p50 ms | head p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["steps"]:
        b, h = e["base"], e["head"]
        lines.append(
            f"| {e['clients']} | {b['throughput_rps']:.2f} | {h['throughput_rps']:.2f} | "
            f"{e['throughput_ratio']:.2f} | {b['queue_ms']:.2f} | {h['queue_ms']:.2f} | "
            f"{b['mean_batch_size']:.2f} | {h['mean_batch_size']:.2f} | {b['p50_ms']:.0f} | "
            f"{h['p50_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vs_commit.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sharpcxr-vs-"))
    runs: dict[str, list[list[dict[str, Any]]]] = {"base": [], "head": []}
    with worktree(args.base) as base_tree:
        for round_ in range(args.rounds):
            for tree_name, tree in (("base", base_tree), ("head", REPO)):
                with service(tree, args.models.resolve(), args.resolution, work) as url:
                    rows = sweep(url, args, work / f"{tree_name}-{round_}.json")
                runs[tree_name].append(rows)
                sys.stderr.write(f"vs_commit: round {round_ + 1} {tree_name} done\n")
    report = {
        "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench_vs_commit " + shlex.join(argv),
        "base": args.base,
        "machine": "{cores} cores, {platform}, load {load_average_1_5_15}".format(**machine_info()),
        "resolution": args.resolution,
        "requests": args.requests,
        "rounds": args.rounds,
        "steps": summarise(runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
