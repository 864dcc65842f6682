"""Smoke test of benchmarks/bench_training.py at tiny sizes (the real run is manual)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import bench_training as bt

CASE: dict[str, Any] = {
    "architecture": "compact",
    "resolution": 64,
    "batch": 1,
    "checkpointing": False,
    "budget_s": 0.0,
    "min_steps": 2,
    "threads": 1,
}


def _row(
    arch: str, res: int, ckpt: bool, fmt: str, images_per_s: float, memory: float
) -> dict[str, Any]:
    """A hand-made measured row: only the fields the ratios and the report read."""
    return {
        "architecture": arch,
        "resolution": res,
        "batch": 2,
        "checkpointing": ckpt,
        "memory_format": fmt,
        "steps": 3,
        "step_s_median": round(2 / images_per_s, 3),
        "images_per_s": images_per_s,
        "peak_over_baseline_mib": memory,
        "peak_rss_mib": memory + 500,
    }


def test_training_case_in_subprocess_and_report() -> None:
    off = bt.run_train_case(CASE, timeout_s=120)
    assert "error" not in off, off
    assert off["steps"] >= 2 and off["images_per_s"] > 0
    assert off["peak_rss_mib"] >= off["baseline_rss_mib"] > 0
    assert off["protocol_batch"] == 64
    assert off["memory_format"] == "contiguous" and off["features_channels_last"] is False

    # The ratio and report plumbing, with a synthetic "on" row beside the measured one.
    on = {**off, "checkpointing": True, "images_per_s": off["images_per_s"] / 2}
    ratios = bt.train_ratios([off, on])
    assert len(ratios) == 1 and ratios[0]["throughput_on_over_off"] == 0.5
    report: dict[str, Any] = {
        "command": "uv run python -m benchmarks.bench_training --quick",
        "machine": bt.machine_info(),
        "threads": 1,
        "training": {"results": [off, on, {**CASE, "error": "exit -9: killed"}], "ratios": ratios},
    }
    text = bt.markdown(report)
    assert "| compact | 64 | 1 | contiguous | off |" in text and "exit -9" in text
    assert "Channels-last / contiguous" not in text  # no format ratios in this report


def test_channels_last_case_in_subprocess() -> None:
    row = bt.run_train_case({**CASE, "channels_last": True}, timeout_s=120)
    assert "error" not in row, row
    assert row["memory_format"] == "channels_last"
    # the conversion really reached the activations (not a silent NCHW fallback)
    assert row["features_channels_last"] is True
    assert row["steps"] >= 2 and row["images_per_s"] > 0


def test_failed_case_row_keeps_memory_format() -> None:
    row = bt.run_train_case({**CASE, "architecture": "no-such-net", "channels_last": True}, 120)
    assert row["error"].startswith("exit 1:"), row
    assert row["memory_format"] == "channels_last" and row["architecture"] == "no-such-net"
    assert "| no-such-net | 64 | 1 | channels_last | off | exit 1:" in bt._train_row(row)


def test_ratios_never_mix_memory_formats() -> None:
    rows = [
        _row("densenet121", 256, False, "contiguous", 4.0, 1000.0),
        _row("densenet121", 256, True, "contiguous", 3.0, 600.0),
        _row("densenet121", 256, False, "channels_last", 6.0, 900.0),
        _row("densenet121", 256, True, "channels_last", 5.0, 500.0),
        _row("densenet121", 1024, False, "contiguous", 0.2, 0.0),  # degenerate memory
        _row("densenet121", 1024, False, "channels_last", 0.36, 100.0),
        # channels-last only at 512 px: no contiguous baseline, so no ratio of either kind
        _row("compact", 512, False, "channels_last", 10.0, 100.0),
        _row("compact", 512, True, "channels_last", 9.0, 80.0),
        {**_row("compact", 64, False, "contiguous", 1.0, 1.0), "error": "timed out"},
        _row("compact", 64, False, "channels_last", 2.0, 1.0),
    ]
    ckpt = bt.train_ratios(rows)
    assert ckpt == [
        {
            "architecture": "densenet121",
            "resolution": 256,
            "throughput_on_over_off": 0.75,
            "memory_on_over_off": 0.6,
        }
    ]

    fmt = bt.format_ratios(rows)
    by_key = {(r["architecture"], r["resolution"], r["checkpointing"]): r for r in fmt}
    assert set(by_key) == {
        ("densenet121", 256, False),
        ("densenet121", 256, True),
        ("densenet121", 1024, False),
    }
    assert by_key["densenet121", 256, False]["throughput_cl_over_contiguous"] == 1.5
    assert by_key["densenet121", 256, False]["memory_cl_over_contiguous"] == 0.9
    assert by_key["densenet121", 256, True]["throughput_cl_over_contiguous"] == 1.67
    assert by_key["densenet121", 1024, False]["throughput_cl_over_contiguous"] == 1.8
    assert by_key["densenet121", 1024, False]["memory_cl_over_contiguous"] is None

    # rows written before the format axis existed count as contiguous
    legacy = [{k: v for k, v in r.items() if k != "memory_format"} for r in rows[:2]]
    assert bt.train_ratios(legacy) == ckpt
    assert bt.format_ratios(legacy) == []

    report: dict[str, Any] = {
        "command": "uv run python -m benchmarks.bench_training",
        "machine": {
            "cores": 2,
            "load_average_1_5_15": [0.0, 0.0, 0.0],
            "platform": "Linux",
            "torch": "x",
            "onnxruntime": "y",
        },
        "threads": 2,
        "training": {"results": rows, "ratios": ckpt, "format_ratios": fmt},
    }
    text = bt.markdown(report)
    assert "| model | R | batch | memory format | checkpointing |" in text
    assert "| densenet121 | 256 | 2 | channels_last | on | 3 |" in text
    assert "| compact | 64 | 2 | contiguous | off | timed out |" in text
    assert "### Channels-last / contiguous" in text
    assert "| densenet121 | 256 | off | 1.5 | 0.9 |" in text
    assert "| densenet121 | 1024 | off | 1.8 | None |" in text
    assert "### Gradient checkpointing on / off (contiguous)" in text
    assert "| densenet121 | 256 | 0.75 | 0.6 |" in text


def test_memory_formats_option() -> None:
    assert bt.parse_args([]).memory_formats == ("contiguous", "channels_last")
    assert bt.parse_args(["--memory-formats", "channels_last"]).memory_formats == ("channels_last",)
    assert bt.parse_args(
        ["--memory-formats", " channels_last, contiguous,channels_last"]
    ).memory_formats == ("channels_last", "contiguous")
    for bad in ("nhwc", "contiguous,nhwc", ","):
        with pytest.raises(SystemExit):
            bt.parse_args(["--memory-formats", bad])


def test_run_training_case_set(monkeypatch: pytest.MonkeyPatch) -> None:
    cases: list[dict[str, Any]] = []

    def fake_run(case: dict[str, Any], timeout_s: float = 0.0) -> dict[str, Any]:
        cases.append(case)
        fmt = "channels_last" if case["channels_last"] else "contiguous"
        speed = 2.0 if case["channels_last"] else 1.0
        return _row(case["architecture"], case["resolution"], case["checkpointing"], fmt, speed, 10)

    monkeypatch.setattr(bt, "run_train_case", fake_run)
    out = bt.run_training(("compact",), (64, 128), lambda _res: 2, 0.0, 2, 1)
    assert len(cases) == 8  # 2 resolutions x 2 formats x checkpointing off/on
    assert [(c["channels_last"], c["checkpointing"]) for c in cases[:4]] == [
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    ]
    assert out["memory_formats"] == ["contiguous", "channels_last"]
    assert len(out["ratios"]) == 2 and len(out["format_ratios"]) == 4
    assert {r["throughput_cl_over_contiguous"] for r in out["format_ratios"]} == {2.0}

    cases.clear()
    only = bt.run_training(("compact",), (64,), lambda _res: 2, 0.0, 2, 1, ("channels_last",))
    assert [c["channels_last"] for c in cases] == [True, True]
    assert only["ratios"] == [] and only["format_ratios"] == []
