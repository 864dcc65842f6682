"""``load_tests.cost_report``: the arithmetic, the step rule, the Pareto set, the folders."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from load_tests.cost_report import (
    Prices,
    best_step,
    build_rows,
    cost_per_1000_cpu,
    cost_per_1000_gpu,
    main,
    new_run_dir,
    pareto_front,
)

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "load_tests" / "results" / "sweep.json"
STUDY = REPO / "reports" / "phantom-compact" / "results.json"
COMMITTED = REPO / "reports" / "cost" / "2026-12-03-sweep"
CPU = "onnxruntime:CPUExecutionProvider"


def _row(
    resolution: int, clients: int, rps: float, other: int = 0, s503: int = 0, backend: str = CPU
) -> dict[str, Any]:
    return {
        "resolution": resolution,
        "concurrency": clients,
        "status": {"200": 10, "503": s503, "other": other},
        "throughput_rps": rps,
        "latency_ms": {"p50": 100.0 * clients, "p95": 150.0 * clients, "p99": 0, "mean": 0},
        "mean_batch_size": 1.0,
        "model": {"name": "m", "version": "1", "backend": backend},
        "auroc": {"test_site_a": resolution / 1000, "test_site_b": 0.5},
    }


def _sweep(*rows: dict[str, Any]) -> dict[str, Any]:
    image = {"rows": 512, "columns": 512, "bits_stored": 12}
    return {"url": "http://x", "started_utc": "t", "image": image, "requests_per_step": 10,
            "explain": True, "rows": list(rows)}  # fmt: skip


HANDMADE = _sweep(
    _row(256, 1, 10.0),
    _row(256, 2, 20.0, s503=3),  # 503s are allowed: they already cost throughput
    _row(256, 4, 30.0, other=1),  # faster, but an error that is not a 503: never chosen
    _row(512, 1, 5.0),
    _row(512, 2, 5.0),  # a tie: the lower concurrency wins
    _row(1024, 1, 9.0, other=2),  # no clean step at all
)


def test_cost_arithmetic() -> None:
    # 4 cores x 0.05 / (20 req/s x 3600 s) x 1000 studies
    assert cost_per_1000_cpu(20.0, 4, 0.05) == pytest.approx(0.2 / 72_000 * 1000)
    assert cost_per_1000_cpu(1.0, 1, 3.6) == pytest.approx(1.0)  # 3.6/h at 1/s: 1 per 1000
    assert cost_per_1000_gpu(100.0, 2.5) == pytest.approx(2.5 / 360_000 * 1000)
    assert math.isinf(cost_per_1000_cpu(0.0, 2, 0.05))


def test_step_rule_and_rows_on_a_handmade_sweep() -> None:
    prices = Prices(core_hour=0.05, gpu_hour=2.5, cores=4, cores_source="test")
    built = build_rows(HANDMADE, prices, id_set="test_site_a", ood_set="test_site_b",
                       study=None, downsample="standard")  # fmt: skip
    rows = {r["resolution"]: r for r in built}
    assert sorted(rows) == [256, 512, 1024]
    c256 = rows[256]["chosen"]
    assert c256["concurrency"] == 2 and c256["throughput_rps"] == 20.0
    assert c256["throughput_per_core"] == pytest.approx(5.0)
    assert c256["cost_per_1000_cpu"] == pytest.approx(0.0027777777)
    assert (c256["latency_p50_ms"], c256["latency_p95_ms"]) == (200.0, 300.0)
    assert c256["cost_per_1000_gpu"] is None and rows[256]["device"] == "cpu"
    c512 = rows[512]["chosen"]
    assert c512["concurrency"] == 1 and c512["cost_per_1000_cpu"] == pytest.approx(0.0111111111)
    assert rows[1024]["chosen"] is None and rows[1024]["pareto"] is False
    assert (rows[256]["auroc_id"], rows[256]["auroc_ood"]) == (0.256, 0.5)
    # 256 is cheaper, 512 more accurate: both on the frontier
    assert rows[256]["pareto"] and rows[512]["pareto"]
    assert best_step([_row(64, 1, 3.0, other=1)]) is None


def test_gpu_sweep_is_priced_per_gpu_hour() -> None:
    sweep = _sweep(_row(256, 8, 100.0, backend="onnxruntime:CUDAExecutionProvider"))
    prices = Prices(core_hour=0.05, gpu_hour=2.5, cores=8, cores_source="test")
    (row,) = build_rows(sweep, prices, id_set="test_site_a", ood_set="test_site_b",
                        study=None, downsample="standard")  # fmt: skip
    assert row["device"] == "gpu"
    assert row["chosen"]["cost_per_1000_gpu"] == pytest.approx(0.0069444444)
    assert row["chosen"]["cost_per_1000_cpu"] == pytest.approx(8 * 0.05 / 360_000 * 1000)


def test_pareto_front_on_a_handmade_case() -> None:
    points = [
        ("A", 1.0, 0.70),  # dominated by E: cheaper at the same AUROC
        ("B", 2.0, 0.80),
        ("C", 3.0, 0.75),  # dearer and worse than B
        ("D", 2.0, 0.60),  # same cost as B, worse
        ("E", 0.5, 0.70),
        ("F", math.inf, 0.99),  # no throughput: not a candidate
        ("G", 0.1, None),  # no AUROC: not a candidate
        ("H", 4.0, 0.90),
        ("I", 4.0, 0.90),  # identical points do not dominate each other
    ]
    assert pareto_front(points) == ["E", "B", "H", "I"]
    assert pareto_front([]) == []


def test_a_new_folder_per_run_and_the_first_is_untouched(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(HANDMADE))
    root = tmp_path / "cost"
    argv = ["--sweep", str(sweep), "--cores", "4", "--out-root", str(root)]
    assert main(argv) == 0
    (first,) = root.iterdir()
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert sorted(before) == ["cost.json", "pareto.png", "report.md", "sweep.json"]
    assert main(argv) == 0
    folders = sorted(root.iterdir())
    assert len(folders) == 2 and first in folders
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert first.name.endswith("-" + hashlib.sha256(sweep.read_bytes()).hexdigest()[:8])


def test_run_folder_names_never_collide(tmp_path: Path) -> None:
    now = datetime(2026, 11, 22, 7, 40, 16, tzinfo=UTC)
    a, b = new_run_dir(tmp_path, b"x", now), new_run_dir(tmp_path, b"x", now)
    assert a.name.startswith("20261122T074016Z-") and b.name == a.name + "-2"
    assert a.is_dir() and b.is_dir()


def test_out_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(HANDMADE))
    out = tmp_path / "chosen"
    argv = ["--sweep", str(sweep), "--cores", "4", "--out", str(out)]
    assert main(argv) == 0
    (out / "report.md").write_text("mine")
    assert main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "mine"
    assert main([*argv, "--force"]) == 0
    assert (out / "report.md").read_text().startswith("# Cost versus benefit")
    with pytest.raises(SystemExit):
        main(["--sweep", str(sweep), "--force"])  # --force without --out: nothing to force


def test_the_png_is_a_real_png(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(HANDMADE))
    assert main(["--sweep", str(sweep), "--cores", "4", "--out", str(tmp_path / "o")]) == 0
    png = tmp_path / "o" / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


def test_the_committed_sweep_gives_a_row_per_resolution(tmp_path: Path) -> None:
    out = tmp_path / "o"
    argv = ["--sweep", str(SWEEP), "--study", str(STUDY), "--cores", "2", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "cost.json").read_text())
    swept = sorted({r["resolution"] for r in json.loads(SWEEP.read_text())["rows"]})
    rows = report["rows"]
    assert [r["resolution"] for r in rows] == swept
    for row in rows:
        assert row["chosen"]["cost_per_1000_cpu"] > 0 and row["auroc_id"] is not None
        assert row["chosen"]["cost_per_1000_gpu"] is None  # a CPU sweep
    study_sets = {r["resolution"]: r["study"].get("sets", {}) for r in rows}
    assert study_sets[256]["test"]["auroc"] == pytest.approx(0.7279861111111111)
    assert study_sets[1024] == {}  # the study stops at 512 px
    # the committed report is this computation (only the time and the paths differ)
    committed = json.loads((COMMITTED / "cost.json").read_text())
    regenerate = (COMMITTED / "report.md").read_text().splitlines()[2]
    assert committed["sweep"]["sha256"] == hashlib.sha256(SWEEP.read_bytes()).hexdigest(), (
        f"{SWEEP} changed since {COMMITTED} was written; regenerate it: {regenerate}"
    )
    assert committed["rows"] == rows
    assert (
        "python -m load_tests.cost_report --sweep load_tests/results/sweep.json"
        in ((COMMITTED / "report.md").read_text().splitlines()[2])
    )


def test_help_needs_no_matplotlib() -> None:
    probe = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from load_tests.cost_report import main; main(['--help'])"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--price-core-hour" in done.stdout
