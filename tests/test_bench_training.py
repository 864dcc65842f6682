"""Smoke test of benchmarks/bench_training.py at tiny sizes (the real run is manual)."""

from __future__ import annotations

from typing import Any

from benchmarks import bench_training as bt


def test_training_case_in_subprocess_and_report() -> None:
    case = {
        "architecture": "compact",
        "resolution": 64,
        "batch": 1,
        "checkpointing": False,
        "budget_s": 0.0,
        "min_steps": 2,
        "threads": 1,
    }
    off = bt.run_train_case(case, timeout_s=120)
    assert "error" not in off, off
    assert off["steps"] >= 2 and off["images_per_s"] > 0
    assert off["peak_rss_mib"] >= off["baseline_rss_mib"] > 0
    assert off["protocol_batch"] == 64

    # The ratio and report plumbing, with a synthetic "on" row beside the measured one.
    on = {**off, "checkpointing": True, "images_per_s": off["images_per_s"] / 2}
    ratios = bt.train_ratios([off, on])
    assert len(ratios) == 1 and ratios[0]["throughput_on_over_off"] == 0.5
    report: dict[str, Any] = {
        "command": "uv run python -m benchmarks.bench_training --quick",
        "machine": bt.machine_info(),
        "threads": 1,
        "training": {"results": [off, on, {**case, "error": "exit -9: killed"}], "ratios": ratios},
    }
    text = bt.markdown(report)
    assert "| compact | 64 | 1 | off |" in text and "exit -9" in text
