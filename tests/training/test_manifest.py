"""models/manifest.json: entries, hashes, relative paths, replace-by-(name, resolution)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from imaging.preprocess import NORMALISATION
from training.manifest import load_manifest, manifest_entry, update_manifest

INTENDED_USE = (
    "Research demo trained on synthetic phantoms only. Not for clinical use: "
    "outputs must not inform diagnosis.\n(Line two, verbatim.)"
)


def _entry(models_dir: Path, resolution: int = 256, **overrides: Any) -> dict[str, Any]:
    sub = models_dir / f"r{resolution}"
    sub.mkdir(parents=True, exist_ok=True)
    onnx_file = sub / "model.onnx"
    onnx_file.write_bytes(b"onnx-bytes-" + str(resolution).encode())
    pt_file = sub / "model.pt"
    pt_file.write_bytes(b"checkpoint")
    kwargs: dict[str, Any] = {
        "name": "ptx-compact",
        "version": "0.1.0",
        "resolution": resolution,
        "architecture": "compact",
        "downsample": "blurpool",
        "files": {"onnx": onnx_file, "pt": Path(f"r{resolution}/model.pt")},
        "models_dir": models_dir,
        "threshold": 0.42,
        "threshold_rule": "max Youden J on the validation fold",
        "metrics": {"auroc_id": 0.91, "auroc_ood": 0.85, "data": "phantoms site a / b"},
        "training": {"data": "phantoms", "protocol": "seed", "seed": 0},
        "intended_use": INTENDED_USE,
        "labels": ["pneumothorax"],
    }
    kwargs.update(overrides)
    return manifest_entry(**kwargs)


def test_entry_fields_hashes_and_relative_paths(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    assert entry["files"]["onnx"]["path"] == "r256/model.onnx"
    assert entry["files"]["pt"]["path"] == "r256/model.pt"
    assert "plan" not in entry["files"]
    for info in entry["files"].values():
        digest = hashlib.sha256((tmp_path / info["path"]).read_bytes()).hexdigest()
        assert info["sha256"] == digest
    assert entry["input"]["channels"] == 1
    assert entry["input"]["normalisation"] == NORMALISATION
    assert entry["input"]["shape"] == [None, 1, 256, 256]
    assert entry["outputs"]["cam"] == [None, 8, 8]
    assert entry["intended_use"] == INTENDED_USE
    assert entry["threshold"] == 0.42 and entry["threshold_rule"].startswith("max Youden")
    assert entry["downsample"] == "blurpool" and entry["labels"] == ["pneumothorax"]


def test_round_trip_and_replace_by_name_and_resolution(tmp_path: Path) -> None:
    assert load_manifest(tmp_path) == {"models": []}
    path = update_manifest(tmp_path, _entry(tmp_path, 256))
    update_manifest(tmp_path, _entry(tmp_path, 512))
    update_manifest(tmp_path, _entry(tmp_path, 256, name="ptx-other"))
    replaced = _entry(tmp_path, 256, version="0.2.0", threshold=0.5)
    assert update_manifest(tmp_path, replaced) == path == tmp_path / "manifest.json"

    manifest = json.loads(path.read_text())
    assert manifest == load_manifest(tmp_path)
    keys = [(m["name"], m["resolution"], m["version"]) for m in manifest["models"]]
    assert keys == [
        ("ptx-compact", 256, "0.2.0"),  # replaced in place
        ("ptx-compact", 512, "0.1.0"),
        ("ptx-other", 256, "0.1.0"),
    ]
    assert manifest["models"][0]["threshold"] == 0.5
    assert manifest["models"][0]["intended_use"] == INTENDED_USE
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rejects_bad_entries(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.onnx"
    outside.write_bytes(b"x")
    try:
        with pytest.raises(ValueError, match="not inside"):
            _entry(tmp_path, files={"onnx": outside})
    finally:
        outside.unlink()
    with pytest.raises(FileNotFoundError):
        _entry(tmp_path, files={"onnx": tmp_path / "missing.onnx"})
    with pytest.raises(ValueError, match="onnx"):
        _entry(tmp_path, files={"pt": tmp_path / "r256" / "model.pt"})
    with pytest.raises(ValueError, match="unknown file kinds"):
        _entry(tmp_path, files={"onnx": tmp_path / "r256" / "model.onnx", "tflite": Path("x")})
    with pytest.raises(ValueError, match="threshold_rule"):
        _entry(tmp_path, threshold_rule="")
    (tmp_path / "manifest.json").write_text('{"model": []}')
    with pytest.raises(ValueError, match="models"):
        load_manifest(tmp_path)
