"""benchmarks/bench_pacs.py and its peers (benchmarks/pacs_peers.py): metrics parsing,
ingest and delivery accounting and report on synthetic numbers, and a smoke run of the
whole benchmark (small phantoms, the test models at 256 px, 2 clients) against real servers
on loopback: structure and sanity, no timing goals.
"""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest

from benchmarks import bench_pacs as bp
from benchmarks import pacs_peers as pp
from benchmarks.bench_decode import BASELINE, phantom_bytes

METRICS_TEXT = """\
# HELP sharpcxr_jobs_total PACS jobs
# TYPE sharpcxr_jobs_total counter
sharpcxr_jobs_total{source="stow",state="received"} 5.0
sharpcxr_jobs_total{source="stow",state="done"} 3.0
sharpcxr_jobs_total{source="dimse",state="received"} 2.0
sharpcxr_jobs_created{source="stow",state="received"} 1.7e+09
# TYPE sharpcxr_jobs_pending gauge
sharpcxr_jobs_pending 4.0
sharpcxr_outbox_depth 0.0
sharpcxr_deliveries_total{destination="dimse",outcome="delivered"} 9.0
"""


def test_parse_metrics_and_lookups() -> None:
    samples = pp.parse_metrics(METRICS_TEXT)
    assert ("sharpcxr_jobs_pending", {}, 4.0) in samples
    assert pp.metric_value(samples, "sharpcxr_jobs_total", state="received") == 7.0
    assert pp.metric_value(samples, "sharpcxr_jobs_total", source="stow", state="done") == 3.0
    assert pp.metric_value(samples, "sharpcxr_outbox_depth") == 0.0
    assert pp.metric_value(samples, "absent") == 0.0
    table = pp.metric_table(samples, "sharpcxr_jobs_total", ("source", "state"))
    assert table == {"stow/received": 5.0, "stow/done": 3.0, "dimse/received": 2.0}


def test_make_instances_are_distinct_in_one_new_study() -> None:
    base = phantom_bytes(64, 64, BASELINE)
    instances, study = pp.make_instances(base, 3, "test")
    datasets = [pydicom.dcmread(io.BytesIO(d)) for d in instances]
    uids = {str(ds.SOPInstanceUID) for ds in datasets}
    assert len(uids) == 3
    assert all(str(ds.file_meta.MediaStorageSOPInstanceUID) in uids for ds in datasets)
    assert {str(ds.StudyInstanceUID) for ds in datasets} == {study}
    assert study != str(pydicom.dcmread(io.BytesIO(base)).StudyInstanceUID)
    assert all(ds.PixelData == datasets[0].PixelData for ds in datasets)
    _, other = pp.make_instances(base, 1, "test")
    assert other != study


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _job(i: int, t0: float, state: str = "done", n_objects: int = 3) -> dict[str, Any]:
    kinds = ("seg", "sr", "gsps")[:n_objects]
    return {
        "state": state,
        "attempts": 1,
        "created_at": _iso(t0 + i),
        "updated_at": _iso(t0 + i + 0.5),
        "objects": [{"kind": k, "sop_instance_uid": f"1.2.{i}.{k_i}"} for k_i, k in
                    enumerate(kinds)],
        "deliveries": [{"destination": "dimse", "state": "delivered"} for _ in kinds],
    }  # fmt: skip


def test_delivery_summary_counts_duplicates_and_rates() -> None:
    t0 = 1_700_000_000.0
    jobs = [_job(0, t0), _job(1, t0)]
    arrivals = [pp.Arrival(f"1.2.{i}.{k}", "x", t0 + 1 + i + k * 0.1) for i in (0, 1)
                for k in range(3)]  # fmt: skip
    arrivals.append(pp.Arrival("1.2.0.0", "x", t0 + 5))  # sent twice
    s = pp.delivery_summary(jobs, arrivals, t0, instances=2)
    assert s["job_states"] == {"done": 2} and s["objects"] == {"gsps": 2, "seg": 2, "sr": 2}
    assert s["received"] == 7 and s["received_distinct"] == 6 and s["duplicates"] == 1
    assert s["missing"] == 0 and s["unexpected"] == 0 and s["all_delivered"]
    # the last object first arrived at t0 + 2.2 (the duplicate does not count)
    assert s["delivered_s"] == pytest.approx(2.2, abs=1e-3)
    assert s["delivered_per_s"] == pytest.approx(2 / 2.2, abs=1e-3)
    assert s["jobs_done_s"] == pytest.approx(1.5, abs=1e-3)
    assert s["jobs_per_s"] == pytest.approx(2 / 1.5, abs=1e-3)
    assert s["delivery_tail_s"] == pytest.approx(0.7, abs=1e-3)
    assert s["job_latency"]["median_ms"] == pytest.approx(500, abs=1)

    # one refused job, one object missing: not all delivered, no rate
    partial = pp.delivery_summary(
        [_job(0, t0), _job(1, t0, state="refused", n_objects=0)], arrivals[:2], t0, 2
    )
    assert partial["missing"] == 1 and partial["instances_delivered"] == 0
    assert not partial["all_delivered"] and partial["delivered_per_s"] is None
    assert partial["job_states"] == {"done": 1, "refused": 1}


def test_log_warnings(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    retry = {"level": "WARNING", "message": "delivery not confirmed", "code": "delivery_retry"}
    records = [{"level": "INFO", "message": "service ready"}, retry, retry,
               {"level": "ERROR", "message": "job failed"}]  # fmt: skip
    lines = [json.dumps(r) for r in records] + ["Traceback (most recent call last):"]
    log.write_text("\n".join(lines))
    assert pp.log_warnings(log) == {
        "WARNING delivery_retry": 2,
        "ERROR job failed": 1,
        "other (not a JSON log line)": 1,
    }
    assert pp.log_warnings(tmp_path / "absent.log") == {}


def test_tally_counts_outcomes_and_acknowledged_latencies() -> None:
    tally = pp.Tally()
    tally.add("HTTP 200", acknowledged=2, latency_ms=10.0)
    tally.add("HTTP 200", acknowledged=1, latency_ms=30.0)
    tally.add("transport error", error="ConnectError: refused")
    tally.add("association refused", 3, error="association rejected")
    r = tally.result(8, 2, 1.5, requests=4)
    assert r["instances"] == 8 and r["acknowledged"] == 3 and r["concurrency"] == 2
    assert r["instances_per_s"] == 2.0 and r["seconds"] == 1.5 and r["requests"] == 4
    assert r["latency"]["median_ms"] == 20.0 and r["latency"]["n"] == 2
    assert r["outcomes"] == {"HTTP 200": 2, "association refused": 3, "transport error": 1}
    assert r["errors"] == ["ConnectError: refused", "association rejected"]
    assert pp.Tally().result(1, 1, 0.5)["latency"] is None


def test_recording_keeps_the_run_going(tmp_path: Path) -> None:
    (tmp_path / "srv.log").write_text(json.dumps({"level": "ERROR", "message": "boom"}))
    ctx = bp.Context(bp.parse_args([]), b"", None, tmp_path, tmp_path)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    with bp.recording(ctx, out, "srv", "label"):
        raise RuntimeError("server gone")
    assert out["error"] == "RuntimeError: server gone"
    assert ctx.failures == ["label: RuntimeError: server gone"]
    assert out["server_warnings"] == {"ERROR boom": 1}
    ok: dict[str, Any] = {}
    with bp.recording(ctx, ok, "absent"):
        ok["done"] = True
    assert ok == {"done": True, "server_warnings": {}} and len(ctx.failures) == 1


def _report() -> dict[str, Any]:
    predict = {
        str(c): {"requests": 8, "ok": 8, "errors": [], "concurrency": c, "seconds": 1.0,
                 "instances_per_s": rate, "latency": {"median_ms": 100.0 * c}}
        for c, rate in ((1, 10.0), (4, 16.0))
    }  # fmt: skip

    def row(mode: str, c: int, ingest: float, delivered: float | None) -> dict[str, Any]:
        return {
            "mode": mode,
            "concurrency": c,
            "instances": 8,
            "finished": delivered is not None,
            "ingest": {"acknowledged": 8, "instances_per_s": ingest,
                       "latency": {"median_ms": 30.0}, "outcomes": {"HTTP 200": 8}},
            "delivery": {"delivered_per_s": delivered, "jobs_per_s": 5.0,
                         "job_latency": {"median_ms": 1500.0}, "delivery_tail_s": 0.4,
                         "received_distinct": 24, "duplicates": 0,
                         "all_delivered": delivered is not None, "instances_delivered": 8,
                         "job_states": {"done": 8}, "missing": 0},
            "peaks": {"sharpcxr_jobs_pending": 6, "sharpcxr_outbox_depth": 9},
            "server_warnings": {},
        }  # fmt: skip

    report: dict[str, Any] = {
        "command": "uv run python -m benchmarks.bench_pacs",
        "machine": {"cores": 2, "cpu_count": 2, "load_average_1_5_15": [0.5, 0.5, 0.5],
                    "load_average_after": [1.0, 1.0, 1.0]},
        "settings": {"model": "demo", "architecture": "compact", "resolution": 512,
                     "models_dir": "models", "instances": 8, "predict_requests": 8,
                     "concurrency": [1, 4], "stow_batch": 1, "job_workers": 2,
                     "intra_op_threads": 2, "decode_workers": 2, "max_batch_size": 4,
                     "warmup": 2, "warmup_jobs": 1, "sample_interval_s": 0.25},
        "image": {"rows": 2048, "columns": 2048, "bits_stored": 12, "bytes": 8 << 20},
        "predict": predict,
        "ingest": [row("stow", 1, 20.0, 4.0), row("stow", 4, 32.0, 6.0),
                   row("cstore", 1, 5.0, 2.5), row("cstore", 4, 8.0, None)],
        "failures": [],
    }  # fmt: skip
    bp.add_ratios(report)
    return report


def test_ratios_and_markdown() -> None:
    report = _report()
    stow1, stow4, cstore1, cstore4 = report["ingest"]
    assert stow1["ratios"] == {
        "predict_instances_per_s": 10.0,
        "ingest_over_predict": 2.0,
        "delivered_over_predict": 0.4,
        "jobs_over_predict": 0.5,
    }
    assert stow4["ratios"]["delivered_over_predict"] == 0.375  # against predict at 4 clients
    assert cstore1["ratios"]["ingest_over_predict"] == 0.5
    assert cstore4["ratios"]["delivered_over_predict"] is None  # not delivered: no ratio
    assert bp.ratio(1.0, None) is None and bp.ratio(1.0, 0.0) is None
    assert bp.ratio(float("nan"), 2.0) is None
    text = bp.markdown(report)
    assert "| /v1/predict | 4 | 8/8 | 16.0 | 400.0 | - | - | - | - | 1.00x | 1.00x |" in text
    # ingest 20/s, p50 30 ms, delivered 4/s, 5 jobs/s, job p50 1.5 s, tail 0.4 s, ratios, peaks
    stow_row = "| STOW-RS | 1 | 8/8 | 20.0 | 30.0 | 4 | 5 | 1.5 | 0.4 | 2.00x | 0.40x | 6 | 9 |"
    assert stow_row in text
    assert "| C-STORE | 4 |" in text and "timed out" in text
    json.dumps(report, allow_nan=False)  # strict JSON


def test_parse_args_defaults_and_errors() -> None:
    args = bp.parse_args([])
    assert args.resolution == 512 and args.size == 2048 and args.concurrency == [1, 4]
    assert args.modes == ["stow", "cstore"] and args.stow_batch == 1
    assert args.predict_requests == args.instances and args.models_dir.is_absolute()
    assert args.threads >= 1 and args.decode_workers >= 1
    assert bp.parse_args(["--modes", "cstore", "--concurrency", "2"]).modes == ["cstore"]
    for bad in (["--modes", "wado"], ["--instances", "0"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit):
            bp.parse_args(bad)


def test_smoke_run(models_dir: Path, tmp_path: Path) -> None:
    """The whole benchmark on the test models: 4 small instances per mode, 2 clients."""
    out = tmp_path / "pacs.json"
    bp.main([
        "--out", str(out), "--models-dir", str(models_dir), "--resolution", "256",
        "--size", "256", "--instances", "4", "--predict-requests", "2",
        "--concurrency", "2", "--warmup", "1", "--grace-s", "0.5",
    ])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["failures"] == [] and report["logs"] is None
    assert report["image"]["rows"] == 256 and report["settings"]["resolution"] == 256
    assert len(report["machine"]["load_average_after"]) == 3
    predict = report["predict"]["2"]
    assert predict["ok"] == 2 and predict["instances_per_s"] > 0
    assert [(r["mode"], r["concurrency"]) for r in report["ingest"]] == [
        ("stow", 2),
        ("cstore", 2),
    ]
    for row in report["ingest"]:
        assert row["finished"], row
        assert row["warmup_jobs"]["received"] == 3
        ingest, delivery = row["ingest"], row["delivery"]
        assert ingest["acknowledged"] == 4 and set(ingest["outcomes"]) <= {"HTTP 200", "0x0000"}
        assert delivery["job_states"] == {"done": 4}
        assert delivery["objects"] == {"gsps": 4, "seg": 4, "sr": 4}
        assert delivery["received_distinct"] == 12 and delivery["duplicates"] == 0
        assert delivery["missing"] == 0 and delivery["unexpected"] == 0
        assert delivery["deliveries"] == {"dimse/delivered": 12}
        assert ingest["instances_per_s"] > 0 and delivery["delivered_per_s"] > 0
        # an instance's results are sent after its job is done (one clock: this machine's)
        assert delivery["jobs_per_s"] >= delivery["delivered_per_s"]
        assert 1 <= row["peaks"]["sharpcxr_jobs_pending"] <= 5  # 4 + the warm-up at most
        jobs_total = row["metrics"]["jobs_total"]  # the warm-up job came by STOW-RS
        if row["mode"] == "stow":
            assert jobs_total["stow/done"] == 4 + 1
        else:
            assert jobs_total["dimse/done"] == 4 and jobs_total["stow/done"] == 1
        for value in row["ratios"].values():
            assert value is not None and math.isfinite(value) and value > 0
    text = out.with_suffix(".md").read_text()
    assert "| STOW-RS | 2 | 4/4 |" in text and "| C-STORE | 2 | 4/4 |" in text
