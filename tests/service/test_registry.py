"""The registry refuses bad model files by name and routes by resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.errors import ModelFileError, UnknownResolutionError
from service.registry import load_registry
from service.settings import GateMode, Settings


@pytest.fixture
def copy_dir(models_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models"
    shutil.copytree(models_dir, out)
    return out


def test_loads_warms_and_routes(models_dir: Path) -> None:
    registry = load_registry(Settings(models_dir=models_dir))
    try:
        assert registry.resolutions == [128, 256]
        assert registry.default_resolution == 256  # the highest when unset
        assert registry.get(None).resolution == 256 and registry.get(128).resolution == 128
        with pytest.raises(UnknownResolutionError, match="available resolutions: 128, 256"):
            registry.get(512)
    finally:
        registry.close()
    only = load_registry(Settings(models_dir=models_dir, resolutions=[128]))
    assert only.resolutions == [128] and only.default_resolution == 128
    only.close()


def test_sha256_mismatch_refuses_to_start_naming_the_file(copy_dir: Path) -> None:
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    onnx = copy_dir / manifest["models"][0]["files"]["onnx"]["path"]
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=onnx.name) as info:
        load_registry(Settings(models_dir=copy_dir))
    assert "does not match the manifest" in str(info.value)


def test_models_without_calibration_or_ood_statistics_are_refused(copy_dir: Path) -> None:
    """A manifest written before 0.5 (no calibration, no OOD): refused, with what to do."""
    path = copy_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["models"][0]["ood"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="re-export it with `sharpcxr export`"):
        load_registry(Settings(models_dir=copy_dir))


def test_ood_statistics_file_is_verified(copy_dir: Path) -> None:
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    stats = copy_dir / manifest["models"][0]["files"]["ood"]["path"]
    stats.write_bytes(stats.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelFileError, match=stats.name):
        load_registry(Settings(models_dir=copy_dir))


def test_missing_file_manifest_and_resolution(copy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="has models at \\[128, 256\\] only"):
        load_registry(Settings(models_dir=copy_dir, resolutions=[1024]))
    with pytest.raises(ModelFileError, match=r"no manifest.*make models"):
        load_registry(Settings(models_dir=tmp_path / "empty"))
    with pytest.raises(ModelFileError, match="no 'plan' file, which SHARPCXR_BACKEND=tensorrt"):
        load_registry(Settings(models_dir=copy_dir, backend="tensorrt"))
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    (copy_dir / manifest["models"][1]["files"]["pt"]["path"]).unlink()
    with pytest.raises(ModelFileError, match="is missing"):
        load_registry(Settings(models_dir=copy_dir, backend="torch"))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARPCXR_RESOLUTIONS", "512, 256")
    monkeypatch.setenv("SHARPCXR_API_KEYS", "alpha,beta")
    monkeypatch.setenv("SHARPCXR_LOG_LEVEL", "debug")
    monkeypatch.setenv("SHARPCXR_GATE", "flag")
    s = Settings()
    assert s.resolutions == [256, 512] and s.log_level == "DEBUG" and s.gate is GateMode.FLAG
    assert s.api_key_bytes() == [b"alpha", b"beta"] and "alpha" not in repr(s)
    monkeypatch.setenv("SHARPCXR_RESOLUTIONS", "[300]")
    with pytest.raises(ValueError, match=r"multiple of 32 in 32\.\.2048"):
        Settings()
    monkeypatch.setenv("SHARPCXR_RESOLUTIONS", "256")
    monkeypatch.setenv("SHARPCXR_GATE", "maybe")
    with pytest.raises(ValueError, match="refuse"):
        Settings()
    monkeypatch.setenv("SHARPCXR_GATE", "refuse")
    monkeypatch.setenv("SHARPCXR_RESOLUTIONS", "256")
    monkeypatch.setenv("SHARPCXR_DEFAULT_RESOLUTION", "512")
    with pytest.raises(ValueError, match="not among"):
        Settings()
