"""benchmarks/bench_service.py: statistics, goals and report; a smoke test of the naive peer.

The benchmark itself is run by hand (minutes on 2 cores); here the pure parts are checked
on synthetic numbers, and the naive peer serves one request from the compact demo model at
256 px through a real uvicorn server on loopback.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from benchmarks import bench_service as bs
from benchmarks.bench_decode import BASELINE, phantom_bytes
from cxrmodel.manifest import read_manifest
from cxrmodel.networks import build_model
from imaging.saliency import decode_mask_png
from service.registry import load_registry
from service.settings import Settings


def test_latency_stats_and_stage_medians() -> None:
    stats = bs.latency_stats([10.0, 30.0, 20.0, 40.0, 1000.0])
    assert stats == {"median_ms": 30.0, "p90_ms": 616.0, "min_ms": 10.0, "n": 5}
    with pytest.raises(ValueError):
        bs.latency_stats([])
    stages = bs.stage_medians(
        [{"decode": 10, "inference": 100, "total": 130}, {"decode": 12, "inference": 90}]
    )
    assert stages == {"decode": 11.0, "inference": 95.0, "total": 65.0}
    assert bs.stage_medians([]) == {}


def test_derive_ratio_overhead_and_explanation_cost() -> None:
    bare = {"median_ms": 200.0}
    full = {"median_ms": 230.0}
    prob = {"median_ms": 220.0}
    d = bs.derive(bare, full, prob, {"total": 225.0, "inference": 205.0})
    assert d == {
        "ratio_e2e_over_bare": 1.15,
        "fixed_overhead_ms": 30.0,
        "server_overhead_ms": 20.0,
        "explanation_cost": pytest.approx(10 / 220, abs=1e-4),
    }
    # no service numbers (e.g. the service failed to start): nothing derived, no crash
    assert all(v is None for v in bs.derive(bare, None, None).values())
    assert bs.throughput(10, 4.0) == 2.5
    assert math.isnan(bs.throughput(1, 0.0))


def _report() -> dict[str, Any]:
    def row(r: int, bare: float, full: float, prob: float) -> dict[str, Any]:
        b, f, p = (
            {"median_ms": float(v), "p90_ms": v * 1.1, "min_ms": float(v), "n": 3}
            for v in (bare, full, prob)
        )
        timings = {
            "decode": 12.0,
            "preprocess": 2.0,
            "queue": 1.0,
            "inference": bare,
            "postprocess": full - prob,
            "total": full - 3,
        }
        return {
            "resolution": r,
            "bare": b,
            "full": f,
            "probability_only": p,
            "server_full_ms": timings,
            "explain_false_honoured": True,
            "derived": bs.derive(b, f, p, timings),
        }

    report: dict[str, Any] = {
        "command": "uv run python -m benchmarks.bench_service --resolutions 512,1024",
        "machine": {"cores": 2, "cpu_count": 2, "load_average_1_5_15": [0.5, 0.5, 0.5]},
        "settings": {
            "intra_op_threads": 2,
            "decode_workers": 2,
            "max_batch_size": 4,
            "batch_timeout_ms": 5.0,
            "repeats": 3,
        },
        "image": {"rows": 2048, "columns": 2048, "bits_stored": 12, "bytes": 8 << 20},
        "families": [
            {"family": "demo", "model": "sharpcxr-demo-compact", "rows": [row(512, 20, 60, 50)]},
            {
                "family": "densenet121",
                "model": bs.DENSENET_NAME,
                "rows": [row(512, 400, 560, 550), row(1024, 1600, 1700, 1690)],
            },
        ],
        "throughput": {
            "resolution": 1024,
            "concurrency": 4,
            "ours": {"requests": 12, "ok": 12, "seconds": 12.0, "requests_per_s": 1.0},
            "peer": {"requests": 4, "ok": 4, "seconds": 32.0, "requests_per_s": 0.125},
            "ratio": 8.0,
        },
    }
    report["checks"] = bs.goal_checks(report)
    return report


def test_goal_checks() -> None:
    checks = {(c["goal"], c["case"]): c for c in _report()["checks"]}
    # e2e / bare is a goal for DenseNet-121 only, at 512 (1.3) and 1024 (1.05)
    assert ("e2e / bare <=", "demo 512") not in checks
    dn512 = checks[("e2e / bare <=", "densenet121 512")]
    assert dn512["value"] == 1.4 and dn512["target"] == 1.3 and not dn512["ok"]
    dn1024 = checks[("e2e / bare <=", "densenet121 1024")]
    assert dn1024["value"] == pytest.approx(1.0625, abs=1e-3) and not dn1024["ok"]
    assert not checks[("fixed overhead ms <=", "densenet121 512")]["ok"]  # 160 ms
    assert not checks[("fixed overhead ms <=", "demo 512")]["ok"]  # 40 ms
    assert not checks[("fixed overhead ms <=", "densenet121 1024")]["ok"]  # 100 ms
    assert not checks[("explanation cost <=", "demo 512")]["ok"]  # 20 % (goal 10 %)
    assert checks[("explanation cost <=", "densenet121 1024")]["ok"]  # 0.6 % (goal 3 %)
    assert ("explanation cost <=", "densenet121 512") not in checks  # no goal there
    assert checks[("lone request queue ms <=", "demo 512")]["ok"]  # 1.0 ms
    tp = checks[("throughput / naive peer >=", "densenet121 1024")]
    assert tp["value"] == 8.0 and not tp["ok"]


def test_markdown_report() -> None:
    report = _report()
    report["families"][0]["service_error"] = "RuntimeError: exited with 1"
    report["machine"]["load_average_after"] = [1.0, 1.0, 1.0]
    text = bs.markdown(report)
    assert "| densenet121-untrained-timing | 1024 | 1600.0 (1760.0) | 1700.0 (1870.0) |" in text
    assert "service failed" in text
    assert "ours / naive peer: **8x**" in text
    assert "| throughput / naive peer >= | densenet121 1024 | 8 | 10.0 | NO |" in text
    assert "| explanation cost <= | densenet121 1024 | 0.6% | 3.0% | yes |" in text
    json.dumps(report, allow_nan=False)  # the report is strict JSON


def test_parse_args_defaults_and_smoke_flags() -> None:
    args = bs.parse_args(["--resolutions", "256", "--repeats", "3", "--peer-requests", "1"])
    assert args.resolutions == [256] and args.repeats == 3 and args.peer_requests == 1
    assert args.families == ["demo", "densenet121"]
    assert args.threads >= 1 and args.decode_workers >= 1
    with pytest.raises(SystemExit):
        bs.parse_args(["--families", "resnet"])


def test_copy_demo_models(models_dir: Path, tmp_path: Path) -> None:
    """Copying a models folder's entries (here the test models, built like the demo's)."""
    entries = bs.copy_demo_models(models_dir, tmp_path, [256])
    assert [e["resolution"] for e in entries] == [256]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == {"models": entries}
    assert set(entries[0]["files"]) == {"onnx", "pt", "ood"}
    for spec in entries[0]["files"].values():
        assert (tmp_path / spec["path"]).is_file()
    read_manifest(tmp_path)  # still a valid manifest


def test_untrained_densenet_models_are_servable(tmp_path: Path) -> None:
    """The benchmark's DenseNet-121 folder passes the registry's checks and loads: its
    OOD statistics fit its embeddings (1024 features), its calibration is recorded."""
    [entry] = bs.build_densenet_models(tmp_path, [64])
    assert entry["outputs"]["embedding"] == [None, 1024]
    assert entry["calibration"]["temperature"] == 1.0
    registry = load_registry(Settings(models_dir=tmp_path, max_batch_size=1))
    try:
        model = registry.get(64)
        assert model.statistics.size == 1024 and model.ood.threshold > 0
    finally:
        registry.close()
    assert bs.build_densenet_models(tmp_path, [64]) == [entry]  # reused, not re-exported


def positive_cam_checkpoint(path: Path, resolution: int = 256) -> Path:
    """An untrained compact model whose classifier weights are all positive, saved as a
    training checkpoint: every feature counts as evidence, so its Grad-CAM is positive
    wherever the features are, and a mask and boxes exist whatever the image (a trained
    model may rightly find no evidence at all in a random phantom)."""
    torch.manual_seed(0)
    model = build_model("compact", "standard", 1)
    with torch.no_grad():
        model.classifier.weight.abs_()
    config = {**model.config(), "resolution": resolution, "labels": ["Pneumothorax"]}
    torch.save({"model_state": model.state_dict(), "model_config": config}, path)
    return path


def test_naive_peer_serves_a_dicom(tmp_path: Path) -> None:
    checkpoint = positive_cam_checkpoint(tmp_path / "peer.pt")
    rows, columns = 300, 240
    data = phantom_bytes(rows, columns, BASELINE)
    env = {"NAIVE_PEER_CHECKPOINT": str(checkpoint)}
    with bs.server("naive-peer", bs.peer_argv(), env, tmp_path, timeout_s=120) as peer:
        with httpx.Client(timeout=60) as client:
            body = bs.post_predict(client, peer.base_url + "/predict", data, {})
            refused = client.post(
                peer.base_url + "/predict",
                content=b"not a dicom",
                headers={"Content-Type": bs.DICOM_TYPE},
            )
        process = peer.process
    assert process.poll() is not None, "the server must be terminated on exit"
    assert 0.0 <= body["probability"] <= 1.0
    assert body["image"] == {"rows": rows, "columns": columns}
    mask = decode_mask_png(base64.b64decode(body["mask"]["data"]))
    assert mask.shape == (rows, columns) and mask.any()
    assert body["boxes"], "a Grad-CAM thresholded at 0.5 has at least one region"
    for box in body["boxes"]:
        assert 0 <= box["x_min"] <= box["x_max"] < columns
        assert 0 <= box["y_min"] <= box["y_max"] < rows
        assert 0.0 <= box["score"] <= 1.0
    assert refused.status_code == 400
