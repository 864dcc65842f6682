"""The soak (benchmarks/soak.py): its verdict on made-up runs, its process-tree memory,
and real soaks of the service: 3 minutes in the default suite, 30 minutes under ``slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import soak
from benchmarks.proctree import descendants, sample_tree
from benchmarks.soak_load import Outcome


def _outcomes(p95_by_window: list[float], window_s: float, rate: float = 4.0) -> list[Outcome]:
    """``rate`` requests/s per window: 90% at 10 ms, the slowest 10% at the window's value
    (so the window's p95 is that value)."""
    out = []
    for w, slow in enumerate(p95_by_window):
        n = int(window_s * rate)
        for i in range(n):
            latency = slow if i % 10 == 0 else 10.0
            due = w * window_s + i / rate
            out.append(Outcome("predict", due, 200, latency, 0.0, True))
    return out


def _samples(rss_by_window: list[float], window_s: float) -> list[dict[str, Any]]:
    return [
        {"t_s": w * window_s + k * window_s / 3, "rss_mib": rss}
        for w, rss in enumerate(rss_by_window)
        for k in range(3)
    ]


def _verdict(rss: list[float], p95: list[float], outcomes: list[Outcome] | None = None) -> Any:
    window_s = 30.0
    outs = outcomes if outcomes is not None else _outcomes(p95, window_s)
    wins = soak.windows(outs, _samples(rss, window_s), 0.0, window_s, window_s * len(rss))
    return soak.verdict(wins, outs, rss_bound=0.05, p95_bound=0.10)


def test_verdict_passes_a_flat_run() -> None:
    v = _verdict([800, 802, 799, 801], [100, 104, 98, 106])
    assert v["ok"], v
    assert v["checks"]["rss_growth"]["value"] == pytest.approx(801 / 800 - 1, abs=1e-3)


def test_verdict_fails_growing_memory() -> None:
    v = _verdict([800, 830, 860, 900], [100, 100, 100, 100])
    assert not v["ok"]
    assert not v["checks"]["rss_growth"]["ok"]
    assert v["checks"]["rss_growth"]["value"] == pytest.approx(0.125, abs=1e-3)


def test_verdict_fails_latency_creep_but_not_a_faster_window() -> None:
    slower = _verdict([800] * 5, [100, 100, 100, 100, 125])
    assert not slower["checks"]["p95_drift"]["ok"]
    assert slower["checks"]["p95_drift"]["value"] == pytest.approx(0.25, abs=0.02)
    faster = _verdict([800] * 5, [100, 100, 100, 60, 100])
    assert faster["checks"]["p95_drift"]["ok"], faster["checks"]["p95_drift"]


def test_contended_windows_are_left_out_of_the_p95_check_but_not_too_many() -> None:
    """A window in which the processes waited for a CPU most of the time measures the
    neighbours: it is listed and not judged; with half the windows or more contended the
    check fails (nothing to judge), it never passes vacuously."""
    window_s = 30.0
    outs = _outcomes([100, 100, 100, 300], window_s)
    wins = soak.windows(outs, _samples([800] * 4, window_s), 0.0, window_s, 4 * window_s)
    assert not soak.verdict(wins, outs, 0.05, 0.10, max_cpu_wait=0.25)["ok"]
    wins[3]["cpu_wait_fraction"] = 0.6
    p95 = soak.verdict(wins, outs, 0.05, 0.10, max_cpu_wait=0.25)["checks"]["p95_drift"]
    assert p95["ok"] and p95["contended_windows"] == [3] and p95["judged_windows"] == 3
    wins[1]["cpu_wait_fraction"] = wins[2]["cpu_wait_fraction"] = 0.6
    assert not soak.verdict(wins, outs, 0.05, 0.10, max_cpu_wait=0.25)["checks"]["p95_drift"]["ok"]


def test_verdict_fails_one_unexpected_answer() -> None:
    outs = _outcomes([100, 100, 100], 30.0)
    outs[50] = Outcome("predict", outs[50].due_s, 503, 5.0, 0.0, False, "overloaded")
    v = _verdict([800] * 3, [100] * 3, outs)
    assert not v["ok"]
    assert v["checks"]["unexpected"]["by_kind"] == {"predict: 503": 1}


def test_process_tree_memory_sums_the_children() -> None:
    """A parent with two children holding 64 MiB each: the tree's RSS counts all three."""
    code = (
        "import subprocess, sys, time\n"
        "hold = 'import time; b = b\"x\" * (64 << 20); time.sleep(60)'\n"
        "kids = [subprocess.Popen([sys.executable, '-c', hold]) for _ in range(2)]\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        sample: dict[str, Any] = {}
        while time.monotonic() < deadline:
            sample = sample_tree(parent.pid, time.monotonic())
            if len(sample["processes"]) == 3 and sample["rss_mib"] > 2 * 64:
                break
            time.sleep(0.2)
        assert len(sample["processes"]) == 3, sample
        assert sample["rss_mib"] > 2 * 64 + sample["rss_server_mib"] - 1, sample
        assert sample["rss_server_mib"] < 64, sample  # the parent itself holds little
    finally:
        for pid in descendants(parent.pid)[1:]:
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def _soak(models_dir: Path, out: Path, *argv: str) -> dict[str, Any]:
    """``python -m benchmarks.soak`` as its own process (the command the Makefile runs)."""
    args = ["--models-dir", str(models_dir), "--out", str(out), *argv]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *args],
        cwd=soak.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == (0 if report["verdict"]["ok"] else 1), done.stderr[-2000:]
    return report


def _assert_sound(report: dict[str, Any], rate: float) -> None:
    """What makes the verdict worth reading: the load was what it says."""
    v = report["verdict"]
    # on a failure: the load average says whether the neighbours had the cores
    assert v["ok"], f"load average after {report['load_average_after']}: " + json.dumps(
        {k: {kk: vv for kk, vv in c.items() if kk != "per_window"} for k, c in v["checks"].items()},
        indent=1,
    )
    for w in report["windows"]:  # open loop: every window got the rate it was due
        assert w["requests_per_s"] == pytest.approx(rate, rel=0.05), w
        assert w["max_send_lag_ms"] < 1000, w
    cycle = {k["kind"]: k["expected_status"] for k in report["settings"]["cycle"]}
    for kind, expected in cycle.items():  # every kind was sent and answered as expected
        assert report["kinds"][kind]["statuses"] == {str(expected): report["kinds"][kind]["n"]}, (
            kind
        )
    assert {400, 415, 422} <= set(cycle.values())
    # the decode workers live in child processes: the RSS must include them
    assert min(len(s["processes"]) for s in report["samples"]) >= 2
    assert report["samples"][-1]["rss_mib"] > report["samples"][-1]["rss_server_mib"]
    # the load leaves a core to the rest of the machine
    assert report["cpu"]["server_tree_cores"] + report["cpu"]["driver_cores"] < 1.0
    assert report["git_sha"] is None or len(report["git_sha"]) == 40
    assert report["command"].startswith("uv run python -m benchmarks.soak ")
    assert report["machine"]["cores"] >= 1


def test_soak_three_minutes(models_dir: Path, tmp_path: Path) -> None:
    """3 minutes at 4 requests/s: RSS growth < 15%, p95 drift <= 50%, no unexpected answer."""
    out = tmp_path / "soak_3min.json"
    report = _soak(
        models_dir,
        out,
        "--duration-s",
        "180",
        "--sample-s",
        "5",
        "--rss-growth",
        "0.15",
        "--p95-drift",
        "0.5",
    )
    _assert_sound(report, 4.0)
    assert len(report["windows"]) == 5  # 30 s of warm-up, then 30-s windows
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.slow
def test_soak_thirty_minutes(models_dir: Path, tmp_path: Path) -> None:
    """The committed run's bounds (``make soak`` writes benchmarks/results/soak_30min.*):
    30 minutes, RSS growth < 5%, p95 drift <= 10%."""
    out = tmp_path / "soak_30min.json"
    report = _soak(models_dir, out, "--duration-s", "1800")
    _assert_sound(report, 4.0)
    assert len(report["windows"]) == 10
