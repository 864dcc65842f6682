"""models/manifest.json: typed entries, hashes, relative paths, replace-by-(name, resolution)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cxrmodel.manifest import (
    CalibrationSpec,
    FileRef,
    ManifestEntry,
    ModelFileError,
    OodSpec,
    new_entry,
    read_manifest,
    upsert_entry,
)
from cxrmodel.vocab import Architecture, Downsample, FileKind
from imaging.preprocess import NORMALISATION

INTENDED_USE = (
    "Research demo trained on synthetic phantoms only. Not for clinical use: "
    "outputs must not inform diagnosis.\n(Line two, verbatim.)"
)


def _entry(models_dir: Path, resolution: int = 256, **overrides: Any) -> ManifestEntry:
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
        "labels": ["pneumothorax"],
        "embedding_size": 49,
        "threshold": 0.42,
        "threshold_rule": "max Youden J on the validation fold",
        "normalisation": NORMALISATION,
        "metrics": {"auroc_id": 0.91, "auroc_ood": 0.85, "data": "phantoms site a / b"},
        "training": {"data": "phantoms", "protocol": "seed", "seed": 0},
        "intended_use": INTENDED_USE,
        "calibration": CalibrationSpec(
            temperature=1.7,
            fitted_on="validation",
            threshold_uncalibrated=0.4,
            ece={"validation": {"before": 0.1, "after": 0.05, "n": 96, "bins": 15}},
        ),
        "ood": OodSpec(
            method="mahalanobis",
            feature="embedding",
            threshold=7.5,
            threshold_rule="conformal",
            fitted_on="train",
            n_fit=384,
            shrinkage=0.1,
        ),
    }
    kwargs.update(overrides)
    return new_entry(**kwargs)


def test_entry_fields_hashes_and_relative_paths(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    assert entry.files[FileKind.ONNX].path == "r256/model.onnx"
    assert entry.files[FileKind.PT].path == "r256/model.pt"
    assert FileKind.PLAN not in entry.files
    for ref in entry.files.values():
        assert ref.sha256 == hashlib.sha256((tmp_path / ref.path).read_bytes()).hexdigest()
    assert entry.input.channels == 1 and entry.input.normalisation == NORMALISATION
    assert entry.input.shape == [None, 1, 256, 256]
    assert entry.outputs.cam == [None, 8, 8] and entry.outputs.embedding == [None, 49]
    assert entry.intended_use == INTENDED_USE
    assert entry.architecture is Architecture.COMPACT and entry.downsample is Downsample.BLURPOOL
    # The written JSON holds plain strings, not enum reprs.
    dumped = entry.model_dump(mode="json")
    assert dumped["architecture"] == "compact" and set(dumped["files"]) == {"onnx", "pt"}


def test_round_trip_and_replace_by_name_and_resolution(tmp_path: Path) -> None:
    assert read_manifest(tmp_path, missing_ok=True).models == []
    with pytest.raises(ModelFileError, match="make models"):
        read_manifest(tmp_path)
    path = upsert_entry(tmp_path, _entry(tmp_path, 256))
    upsert_entry(tmp_path, _entry(tmp_path, 512))
    upsert_entry(tmp_path, _entry(tmp_path, 256, name="ptx-other"))
    replaced = _entry(tmp_path, 256, version="0.2.0", threshold=0.5)
    assert upsert_entry(tmp_path, replaced) == path == tmp_path / "manifest.json"

    manifest = read_manifest(tmp_path)
    keys = [(m.name, m.resolution, m.version) for m in manifest.models]
    assert keys == [
        ("ptx-compact", 256, "0.2.0"),  # replaced in place
        ("ptx-compact", 512, "0.1.0"),
        ("ptx-other", 256, "0.1.0"),
    ]
    assert manifest.models[0].threshold == 0.5
    assert manifest.models[0] == replaced  # what was written is what is read
    assert manifest.by_resolution()[256].name == "ptx-other"  # the last one wins
    assert json.loads(path.read_text())["models"][0]["calibration"]["temperature"] == 1.7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_verified_path_checks_existence_and_hash(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    assert entry.verified_path(FileKind.ONNX, tmp_path) == (tmp_path / "r256/model.onnx").resolve()
    with pytest.raises(ModelFileError, match="no 'plan' file, which SHARPCXR_BACKEND"):
        entry.verified_path(FileKind.PLAN, tmp_path, "SHARPCXR_BACKEND=tensorrt")
    (tmp_path / "r256/model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelFileError, match="does not match the manifest"):
        entry.verified_path(FileKind.ONNX, tmp_path)
    (tmp_path / "r256/model.onnx").unlink()
    with pytest.raises(ModelFileError, match="is missing"):
        entry.verified_path(FileKind.ONNX, tmp_path)


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
    with pytest.raises(ValueError, match="multiple of 32"):
        _entry(tmp_path, resolution=100)
    with pytest.raises(ValueError, match="architecture"):
        _entry(tmp_path, architecture="resnet50")
    with pytest.raises(ValueError):
        FileRef(path="x.onnx", sha256="not-a-hash")


def test_reading_refuses_invalid_manifests_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"model": []}')
    with pytest.raises(ModelFileError, match="'models' list"):
        read_manifest(tmp_path)
    with pytest.raises(ModelFileError):  # an invalid manifest is not silently overwritten
        upsert_entry(tmp_path, _entry(tmp_path))
    (tmp_path / "manifest.json").unlink()
    upsert_entry(tmp_path, _entry(tmp_path))
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["models"][0]["downsample"] = "maxpool"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="downsample"):
        read_manifest(tmp_path)
