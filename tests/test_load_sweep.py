"""The cost sweep (``load_tests.sweep``): its pure parts, and one run against a real server."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from load_tests.sweep import (
    STAGES,
    aurocs_of,
    batch_delta,
    main,
    metric_value,
    parse_metrics,
    percentile,
    phantom_dicom,
    render_table,
)
from tests.e2e.conftest import Server, free_port

# --- percentiles


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
@pytest.mark.parametrize("q", [0, 1, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(n: int, q: float) -> None:
    values = list(np.random.default_rng(n).exponential(100.0, n))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# --- Prometheus text and batch-size deltas


def _scrape(observations: dict[str, list[float]]) -> str:
    """The exposition text of a real prometheus_client histogram, as the service serves it."""
    registry = CollectorRegistry()
    hist = Histogram(
        "sharpcxr_batch_size", "Images per batch", ["resolution"],
        buckets=(1, 2, 4, 8), registry=registry,
    )  # fmt: skip
    for resolution, sizes in observations.items():
        for size in sizes:
            hist.labels(resolution).observe(size)
    return generate_latest(registry).decode()


def test_parse_metrics_reads_histogram_series() -> None:
    samples = parse_metrics(_scrape({"256": [1, 3, 4], "1024": [2]}))
    assert metric_value(samples, "sharpcxr_batch_size_count", resolution="256") == 3
    assert metric_value(samples, "sharpcxr_batch_size_sum", resolution="256") == 8
    assert metric_value(samples, "sharpcxr_batch_size_sum", resolution="1024") == 2
    assert metric_value(samples, "sharpcxr_batch_size_sum") == 10  # summed over labels
    assert metric_value(samples, "sharpcxr_batch_size_count", resolution="512") == 0
    assert metric_value(samples, "sharpcxr_batch_size_bucket", resolution="256", le="2.0") == 1
    assert metric_value(samples, "sharpcxr_batch_size_bucket", resolution="256", le="+Inf") == 3


def test_parse_metrics_handles_escapes_comments_and_other_families() -> None:
    text = (
        "# HELP sharpcxr_requests_total Requests answered\n"
        "# TYPE sharpcxr_requests_total counter\n"
        'sharpcxr_requests_total{endpoint="/v1/predict",resolution="256",status="200"} 12.0\n'
        "# TYPE odd gauge\n"
        'odd{path="a \\"quoted\\" \\\\ back\\nslash"} 1.5e3\n'
        "# TYPE sharpcxr_queue_depth gauge\n"
        'sharpcxr_queue_depth{resolution="256"} 0.0\n'
    )
    samples = parse_metrics(text)
    assert metric_value(samples, "sharpcxr_requests_total", status="200") == 12
    assert metric_value(samples, "odd", path='a "quoted" \\ back\nslash') == 1500
    assert metric_value(samples, "sharpcxr_queue_depth", resolution="256") == 0


def test_batch_delta_counts_only_the_step() -> None:
    before = parse_metrics(_scrape({"256": [1, 1], "512": [8]}))
    after = parse_metrics(_scrape({"256": [1, 1, 2, 4, 3], "512": [8, 8]}))
    assert batch_delta(before, after, 256) == (3, pytest.approx(3.0))
    assert batch_delta(before, after, 512) == (1, pytest.approx(8.0))
    batches, mean = batch_delta(before, before, 256)
    assert batches == 0 and math.isnan(mean)
    batches, mean = batch_delta(parse_metrics(""), after, 256)  # first scrape before any batch
    assert batches == 5 and mean == pytest.approx(11 / 5)


def test_aurocs_of_keeps_test_sets_only() -> None:
    metrics = {
        "validation": {"auroc": 0.8},
        "test_site_b": {"auroc": 0.55, "n": 160},
        "test_site_a": {"auroc": 0.74},
        "test_broken": {"n": 3},
        "note": "x",
    }
    assert aurocs_of(metrics) == {"test_site_a": 0.74, "test_site_b": 0.55}


# --- the table


def _row(resolution: int, clients: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "resolution": resolution,
        "concurrency": clients,
        "status": {"200": 30, "503": 2, "other": 0},
        "throughput_rps": 4.256,
        "latency_ms": {"p50": 210.04, "p95": 388.5, "p99": 401.0, "mean": 250.0},
        "timings_ms": dict.fromkeys(STAGES, 12.5),
        "mean_batch_size": 1.75,
        "auroc": {"test_site_a": 0.7262, "test_site_b": 0.5432},
    }
    return row | overrides


def test_render_table() -> None:
    rows = [
        _row(256, 1),
        _row(1024, 8, auroc={"test_site_a": 0.739}, mean_batch_size=None),
        _row(1024, 16, latency_ms={"p50": None, "p95": None, "p99": None, "mean": None}),
    ]
    lines = render_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["resolution", "clients", "req/s"]
    assert header[-2:] == ["AUROC test_site_a", "AUROC test_site_b"]
    assert lines[1].count("|") == len(header) + 1
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(c) == len(header) for c in cells)
    assert cells[0][:7] == ["256", "1", "4.26", "210.0", "388.5", "401.0", "30/2/0"]
    assert cells[0][-2:] == ["0.726", "0.543"]
    assert cells[1][header.index("mean batch")] == "-"
    assert cells[1][-1] == "-"  # no OOD AUROC for that model
    assert cells[2][3:6] == ["-", "-", "-"]


def test_phantom_is_a_synthetic_12_bit_dicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(phantom_dicom(64)))
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (64, 64, 12)
    assert str(ds.PatientName) == "PHANTOM^SYNTHETIC"  # the writer's synthetic default


# --- the CLI


def test_no_service_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "make serve" in err
    assert not (tmp_path / "s.json").exists()


@pytest.fixture(scope="module")
def sweep_server(
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    s = Server(models_dir, tmp_path_factory.mktemp("sweep") / "service.log")
    yield s
    s.stop()


def test_sweep_against_a_real_server(
    sweep_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "sweep.json"
    argv = ["--url", sweep_server.url, "--resolutions", "128", "--concurrency", "1,2"]
    argv += ["--requests", "4", "--size", "512", "--warmup", "1", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    models = httpx.get(sweep_server.url + "/v1/models").json()["models"]
    served = next(m for m in models if m["resolution"] == 128)
    rows = report["rows"]
    assert [(r["resolution"], r["concurrency"]) for r in rows] == [(128, 1), (128, 2)]
    for row in rows:
        assert row["status"] == {"200": 4, "503": 0, "other": 0}
        assert row["requests"] == 4 and row["throughput_rps"] > 0
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert set(row["timings_ms"]) == set(STAGES)
        assert all(v >= 0 for v in row["timings_ms"].values())
        assert row["timings_ms"]["total"] > 0
        assert row["auroc"] == aurocs_of(served["metrics"]) and "test_site_a" in row["auroc"]
        assert row["model"]["backend"] == served["backend"]
    # one client in a closed loop can only ever fill batches of one
    assert rows[0]["batches"] == 4 and rows[0]["mean_batch_size"] == 1.0
    assert 2 <= rows[1]["batches"] <= 4 and 1.0 <= rows[1]["mean_batch_size"] <= 2.0
    assert report["image"] == {"rows": 512, "columns": 512, "bits_stored": 12}
    table = capsys.readouterr().out
    assert table.startswith("| resolution | clients | req/s") and table.count("\n| 128 |") == 2
    assert table in out.with_suffix(".md").read_text()
