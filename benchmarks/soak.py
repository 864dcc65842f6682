"""Soak: a real service under a steady open-loop load; memory and latency must stay flat.

One ``python -m service`` subprocess (:func:`benchmarks.bench_service.server`) on the test
fixture models (``tests/service/models_fixture.build_fixture_models()``) or ``--models-dir``
is sent requests at a fixed rate (``--rate`` per second, open loop: request ``i`` is due at
``t0 + i / rate`` whatever the earlier ones did, and its latency is counted from that due
time, so a stalled server shows as latency rather than as fewer requests). The mix is one
fixed cycle (:mod:`benchmarks.soak_load`): ``/v1/predict`` at every loaded resolution
(PNG and RLE masks, heatmaps, probability only, multipart, DICOM objects out) on phantom
DICOMs in three sizes and transfer syntaxes, ``/v1/compare``, ``/v1/display``, uploads
that must be refused (400, 415, 422), ``/v1/models`` and ``/metrics`` scrapes.

Every ``--sample-s`` seconds the resident memory (``VmRSS``) of the server process and of
all its descendants (decode workers, the forkserver, the resource tracker) is summed;
PSS, threads, open files and CPU seconds are kept beside it. After ``--warmup-s`` the run
is cut into windows (``--window-s``, default a tenth of the rest, at least 30 s), each
with p50/p95/p99 latency, throughput and error counts. The verdict:

- RSS growth: mean RSS of the last window / mean RSS of the first window - 1 < ``--rss-growth``;
- p95 drift: every window's p95 / (median p95 of the first three windows) - 1 <=
  ``--p95-drift`` (only slower counts: a faster window is no degradation). A window in
  which the server tree and this driver spent more than ``--max-cpu-wait`` of their
  runnable time waiting for a CPU (``schedstat``: a neighbour had it) is listed and left
  out; with fewer than half the windows left the check fails;
- no unexpected answer: any 5xx, transport error or status other than the expected one.

    uv run python -m benchmarks.soak --duration-s 1800 \\
        --out benchmarks/results/soak_30min.json   # the committed run (make soak)
    uv run python -m benchmarks.soak --duration-s 180 --sample-s 5 --rss-growth 0.15 \\
        --p95-drift 0.5 --out /tmp/soak.json   # make soak-short

Exit status 0 when the verdict passes, 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_service import server, service_argv
from benchmarks.proctree import sample_tree
from benchmarks.soak_load import Outcome, build_cycle, send
from benchmarks.soak_plot import plot

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- statistics ------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def windows(
    outcomes: Sequence[Outcome],
    samples: Sequence[dict[str, Any]],
    warmup_s: float,
    window_s: float,
    end_s: float,
) -> list[dict[str, Any]]:
    """Per window after warm-up: latency percentiles (ms, from the due time), requests/s,
    unexpected answers, mean RSS of the samples taken in it."""
    out = []
    n = max(1, int((end_s - warmup_s) // window_s))
    for i in range(n):
        start, stop = warmup_s + i * window_s, warmup_s + (i + 1) * window_s
        inside = [o for o in outcomes if start <= o.due_s < stop]
        lat = [o.latency_ms for o in inside if o.expected]
        rss = [s["rss_mib"] for s in samples if start <= s["t_s"] < stop]
        predict = [o.latency_ms for o in inside if o.expected and o.kind.startswith("predict")]
        # the server tree's CPU per request: what the service itself spends, which (unlike
        # latency) hardly moves when neighbours on a shared machine take the cores
        cpu = [s for s in samples if start <= s["t_s"] < stop and "cpu_s" in s]
        served = sum(cpu[0]["t_s"] <= o.due_s < cpu[-1]["t_s"] for o in inside) if cpu else 0
        cpu_ms = (cpu[-1]["cpu_s"] - cpu[0]["cpu_s"]) * 1e3 / served if served else None
        # the share of their runnable time the server tree and the driver spent waiting for a
        # CPU that a neighbour had: high, and the window's latency measures the neighbours
        sched = [s["sched_s"] for s in cpu if "sched_s" in s]
        ran, waited = (max(0.0, sched[-1][i] - sched[0][i]) for i in (0, 1)) if sched else (0, 0)
        cpu_wait = waited / (ran + waited) if ran + waited > 0 else None
        out.append(
            {
                "start_s": round(start, 1),
                "end_s": round(stop, 1),
                "requests": len(inside),
                "requests_per_s": round(len(inside) / window_s, 3),
                "unexpected": sum(not o.expected for o in inside),
                "p50_ms": pct(lat, 50),
                "p95_ms": pct(lat, 95),
                "p99_ms": pct(lat, 99),
                "predict_p95_ms": pct(predict, 95),
                "max_send_lag_ms": round(max((o.lag_ms for o in inside), default=0.0), 1),
                "rss_mean_mib": round(statistics.fmean(rss), 2) if rss else None,
                "rss_samples": len(rss),
                "server_cpu_ms_per_request": None if cpu_ms is None else round(cpu_ms, 2),
                "cpu_wait_fraction": None if cpu_wait is None else round(cpu_wait, 3),
            }
        )
    return out


def verdict(
    wins: Sequence[dict[str, Any]],
    outcomes: Sequence[Outcome],
    rss_bound: float,
    p95_bound: float,
    max_cpu_wait: float = 1.0,
) -> dict[str, Any]:
    """The three checks of the module docstring, each with its numbers. Windows whose
    ``cpu_wait_fraction`` is above ``max_cpu_wait`` are left out of the p95 check (and
    listed); the check fails when fewer than half of the windows are left to judge."""
    first, last = wins[0]["rss_mean_mib"], wins[-1]["rss_mean_mib"]
    growth = (last / first - 1) if first and last else None
    contended = [i for i, w in enumerate(wins) if (w.get("cpu_wait_fraction") or 0) > max_cpu_wait]
    judged = [w for i, w in enumerate(wins) if i not in contended and w["p95_ms"] is not None]
    p95s = [w["p95_ms"] for w in judged]
    baseline = statistics.median(p95s[:3]) if p95s else None
    drifts = [round(p / baseline - 1, 4) for p in p95s] if baseline else []
    enough_judged = 2 * len(judged) >= len(wins)
    bad = [o for o in outcomes if not o.expected]
    kinds: dict[str, int] = {}
    for o in bad:
        key = f"{o.kind}: {o.status or o.error}"
        kinds[key] = kinds.get(key, 0) + 1
    checks = {
        "rss_growth": {
            "value": None if growth is None else round(growth, 4),
            "bound": rss_bound,
            "ok": growth is not None and growth < rss_bound,
            "first_window_mib": first,
            "last_window_mib": last,
        },
        "p95_drift": {
            "value": max(drifts) if drifts else None,
            "min": min(drifts, default=None),
            "bound": p95_bound,
            "baseline_ms": baseline,
            "ok": bool(drifts) and max(drifts) <= p95_bound and enough_judged,
            "per_window": drifts,
            "max_cpu_wait": max_cpu_wait,
            "contended_windows": contended,  # left out: the neighbours had the CPUs
            "judged_windows": len(judged),
            "why": None
            if enough_judged
            else f"only {len(judged)} of {len(wins)} windows could be judged: in the others "
            f"the service and the driver waited for a CPU more than {max_cpu_wait:.0%} of "
            "their runnable time (the machine was too busy to measure latency)",
        },
        "unexpected": {
            "value": len(bad),
            "bound": 0,
            "ok": not bad,
            "by_kind": kinds,
            "first": [o.as_dict() for o in bad[:5]],
        },
    }
    enough = len(wins) >= 2 and all(w["rss_samples"] for w in (wins[0], wins[-1]))
    checks["enough_data"] = {"value": len(wins), "ok": enough}
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


# ---- the run ---------------------------------------------------------------------------


def git_sha() -> str | None:
    """HEAD's commit, read from ``.git`` (no git process: the tree may be mid-edit)."""
    git = REPO_ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def drive(
    base_url: str, pid: int, cycle: Sequence[Any], args: argparse.Namespace
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """The open-loop load and the sampler, for ``--duration-s``; outcomes and samples."""
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append(sample_tree(pid, t0))
            stop.wait(args.sample_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    total = int(args.duration_s * args.rate)
    outcomes: list[Outcome] = []
    # threads > rate x the worst latency expected: a slow server must not slow the sender
    with ThreadPoolExecutor(max_workers=args.client_threads) as pool:
        futures = []
        for i in range(total):
            due = i / args.rate
            delay = t0 + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, base_url, cycle[i % len(cycle)], t0, due))
        outcomes = [f.result() for f in futures]
    stop.set()
    thread.join(timeout=args.sample_s + 5)
    samples.append(sample_tree(pid, t0))
    return outcomes, samples


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from benchmarks.bench_training import machine_info

    if args.models_dir is None:
        from tests.service.models_fixture import build_fixture_models

        args.models_dir = build_fixture_models()
    work = Path(tempfile.mkdtemp(prefix="soak_"))
    env = {
        "SHARPCXR_MODELS_DIR": str(Path(args.models_dir).resolve()),
        "SHARPCXR_DATA_DIR": str(work / "data"),
        **{f"SHARPCXR_{k.upper()}": v for k, v in args.set},
    }
    with server("service-soak", service_argv(), env, work, args.startup_timeout_s) as srv:
        cycle, resolutions = build_cycle(srv.base_url)
        outcomes, samples = drive(srv.base_url, srv.process.pid, cycle, args)
        log_tail = srv.log_tail(4000)
    end_s = args.duration_s
    wins = windows(outcomes, samples, args.warmup_s, args.window_s, end_s)
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    driver_cpu = samples[-1]["driver_cpu_s"] - samples[0]["driver_cpu_s"]
    report: dict[str, Any] = {
        "benchmark": "soak: steady open-loop load on a real service; RSS of the process "
        "tree and latency per window",
        "command": "uv run python -m benchmarks.soak " + shlex.join(argv),
        "git_sha": git_sha(),
        "machine": {
            **machine_info(),
            "python_executable": sys.executable,
            "platform": platform.platform(),
        },
        "settings": {
            "duration_s": args.duration_s,
            "rate_per_s": args.rate,
            "sample_s": args.sample_s,
            "warmup_s": args.warmup_s,
            "window_s": args.window_s,
            "models_dir": str(args.models_dir),
            "resolutions": resolutions,
            "service_env": {k: v for k, v in env.items() if k != "SHARPCXR_DATA_DIR"},
            "cycle": [{"kind": k.kind, "expected_status": k.expected} for k in cycle],
        },
        # the machine is shared: a p95 drift with a load average well above the cores is
        # the neighbours' as much as the service's
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu": {
            "server_tree_cores": round(cpu / end_s, 3),
            "driver_cores": round(driver_cpu / end_s, 3),
        },
        "kinds": kind_summary(outcomes, args.warmup_s),
        "windows": wins,
        "verdict": verdict(wins, outcomes, args.rss_growth, args.p95_drift, args.max_cpu_wait),
        "samples": samples,
        "server_log_tail": None,
        "server_log": None,
    }
    if report["verdict"]["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    else:  # a failed run keeps the server's log and data for a look
        report["server_log_tail"], report["server_log"] = log_tail, str(work)
    return report


def kind_summary(outcomes: Sequence[Outcome], warmup_s: float) -> dict[str, Any]:
    """Per request kind after warm-up: count, statuses, p50/p95 latency in ms."""
    out: dict[str, Any] = {}
    for o in outcomes:
        if o.due_s < warmup_s:
            continue
        row = out.setdefault(o.kind, {"n": 0, "statuses": {}, "lat": []})
        row["n"] += 1
        row["statuses"][str(o.status)] = row["statuses"].get(str(o.status), 0) + 1
        row["lat"].append(o.latency_ms)
    for row in out.values():
        lat = row.pop("lat")
        row["p50_ms"], row["p95_ms"] = pct(lat, 50), pct(lat, 95)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/soak_30min.json")
    p.add_argument("--models-dir", type=Path, default=None, help="default: the test models")
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second, open loop")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    p.add_argument(
        "--warmup-s", type=float, default=None, help="default: 5%% of the run, at least 30 s"
    )
    p.add_argument(
        "--window-s",
        type=float,
        default=None,
        help="default: a tenth of the run after warm-up, at least 30 s",
    )
    p.add_argument("--rss-growth", type=float, default=0.05)
    p.add_argument("--p95-drift", type=float, default=0.10)
    p.add_argument(
        "--max-cpu-wait",
        type=float,
        default=0.5,
        help="a window whose server and driver spent more than this share of their "
        "runnable time waiting for a CPU is left out of the p95 check (1 = judge all)",
    )
    p.add_argument("--client-threads", type=int, default=32)
    p.add_argument("--startup-timeout-s", type=float, default=300.0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a service setting (SHARPCXR_KEY); default intra_op_threads=1",
    )
    args = p.parse_args(argv)
    pairs = [s.split("=", 1) for s in args.set]
    if any(len(kv) != 2 for kv in pairs):
        p.error("--set takes KEY=VALUE")
    # one ONNX Runtime thread: its pool spins between ops, which on a shared 2-core machine
    # burns a second core for nothing (the soak must leave a core to the rest)
    args.set = [("intra_op_threads", "1"), *((k, v) for k, v in pairs)]
    if args.warmup_s is None:
        args.warmup_s = max(30.0, 0.05 * args.duration_s)
    if args.window_s is None:
        args.window_s = max(30.0, (args.duration_s - args.warmup_s) / 10)
    if args.duration_s - args.warmup_s < 2 * args.window_s:
        p.error("duration must leave at least two windows after warm-up")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    report = run(args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    v = report["verdict"]
    for w in report["windows"]:
        print(
            f"{w['start_s']:>7.0f}-{w['end_s']:<7.0f} s  {w['requests_per_s']:.2f} req/s  "
            f"p50 {w['p50_ms']} p95 {w['p95_ms']} p99 {w['p99_ms']} ms  "
            f"unexpected {w['unexpected']}  RSS {w['rss_mean_mib']} MiB  "
            f"cpu/request {w['server_cpu_ms_per_request']} ms  "
            f"cpu wait {w['cpu_wait_fraction']}"
        )
    print(f"cpu: {report['cpu']}; load average after {report['load_average_after']}")
    print(
        json.dumps(
            {
                k: {
                    kk: vv
                    for kk, vv in c.items()
                    if kk in ("value", "bound", "ok", "why") and vv is not None
                }
                for k, c in v["checks"].items()
            }
        )
    )
    print(f"verdict: {'PASS' if v['ok'] else 'FAIL'} -> {args.out}")
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
