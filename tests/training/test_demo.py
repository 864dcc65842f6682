"""``make models`` (training.demo): the build folder and its progress lines, without training.

A build publishes into ``models/.building/`` and writes ``models/manifest.json`` only when
every stage has finished, so a build that stops halfway leaves no manifest that ``make
serve`` would serve as complete. The stages here are fakes that publish small files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cxrmodel.manifest import ModelFileError, new_entry, read_manifest, upsert_entry
from cxrmodel.vocab import FileKind
from training import demo
from training.config import TrainConfig

NAME = "sharpcxr-demo-compact"


def fake_publish(staging: Path, resolution: int, onnx_bytes: bytes = b"onnx") -> dict[str, Any]:
    """What ``training.publish.publish`` leaves in ``staging``: model files and an entry in
    the staging manifest, paths relative to ``staging``."""
    stem = f"{NAME}-{resolution}"
    onnx = staging / f"{stem}.onnx"
    onnx.write_bytes(onnx_bytes)
    weights = staging / f"{stem}.pt"
    weights.write_bytes(b"weights " + str(resolution).encode())
    entry = new_entry(
        name=NAME,
        version="0.1.0",
        resolution=resolution,
        architecture="compact",
        downsample="standard",
        files={"onnx": onnx, "pt": weights},
        models_dir=staging,
        labels=["pneumothorax"],
        embedding_size=None,
        threshold=0.5,
        threshold_rule="test",
        normalisation={"mean": 0.5, "std": 0.25},
        intended_use="test fixture, not a model",
    )
    upsert_entry(staging, entry)
    return entry.model_dump(mode="json")


def old_build(models_dir: Path) -> None:
    """A complete earlier build: one model file and the manifest naming it."""
    models_dir.mkdir(parents=True)
    fake_publish(models_dir, 256)


# ------------------------------------------------------------------ start / finish
def test_start_build_removes_the_old_manifest_and_empties_staging(tmp_path: Path) -> None:
    models = tmp_path / "models"
    old_build(models)
    leftover = models / demo.STAGING_DIR
    leftover.mkdir()
    (leftover / "stale.onnx").write_bytes(b"from an interrupted build")
    staging = demo.start_build(models)
    assert staging == leftover and list(staging.iterdir()) == []
    assert not (models / "manifest.json").exists()
    assert (models / f"{NAME}-256.onnx").is_file()  # old files stay until the build ends


def test_finish_build_moves_files_then_writes_the_manifest(tmp_path: Path) -> None:
    models = tmp_path / "models"
    staging = demo.start_build(models)
    for resolution in (256, 512, 1024):
        fake_publish(staging, resolution)
    staged = json.loads((staging / "manifest.json").read_text())
    manifest = demo.finish_build(staging, models)
    assert manifest == models / "manifest.json"
    assert not staging.exists()
    assert json.loads(manifest.read_text()) == staged  # the entries, unchanged
    entries = read_manifest(models).models
    assert [e.resolution for e in entries] == [256, 512, 1024]
    for entry in entries:  # relative paths and hashes hold in the models folder
        for kind in (FileKind.ONNX, FileKind.PT):
            assert entry.verified_path(kind, models).parent == models.resolve()


def test_finish_build_replaces_files_of_an_earlier_build(tmp_path: Path) -> None:
    models = tmp_path / "models"
    old_build(models)
    staging = demo.start_build(models)
    (staging / "sub").mkdir()
    (staging / "sub" / "extra.bin").write_bytes(b"x")
    fake_publish(staging, 256, onnx_bytes=b"rebuilt")
    demo.finish_build(staging, models)
    assert (models / f"{NAME}-256.onnx").read_bytes() == b"rebuilt"
    assert (models / "sub" / "extra.bin").read_bytes() == b"x"
    read_manifest(models).models[0].verified_path(FileKind.ONNX, models)


def test_finish_build_refuses_a_staging_folder_without_manifest(tmp_path: Path) -> None:
    models = tmp_path / "models"
    staging = demo.start_build(models)
    (staging / "half.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError):
        demo.finish_build(staging, models)
    assert not (models / "manifest.json").exists()


# ------------------------------------------------------------------ run, with fake stages
@pytest.fixture
def fake_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    roots = {name: tmp_path / "data" / name for name in ("train", "test_site_a", "test_site_b")}
    monkeypatch.setattr(demo, "write_sets", lambda cfg: roots)
    monkeypatch.setattr(demo, "fill_cache", lambda cfg, roots: None)
    return roots


def fake_stage(fail_at: int | None = None) -> Any:
    def build_stage(
        cfg: demo.DemoConfig, train_cfg: TrainConfig, roots: dict[str, Path], staging: Path
    ) -> tuple[dict[str, Any], str]:
        if train_cfg.resolution == fail_at:
            raise KeyboardInterrupt  # Ctrl-C during training
        entry = fake_publish(staging, train_cfg.resolution)
        row = {
            "resolution": train_cfg.resolution, "val_auroc": 0.8, "test_site_a_auroc": 0.75,
            "test_site_b_auroc": 0.7, "epochs": 3, "stopped": "time_budget", "seconds": 1.0,
            "onnx": entry["files"]["onnx"]["path"], "initialised_from": train_cfg.init_from,
        }  # fmt: skip
        return row, f"runs/{train_cfg.resolution}/best.pt"

    return build_stage


def test_an_interrupted_build_leaves_no_manifest(
    fake_inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    old_build(models)
    monkeypatch.setattr(demo, "build_stage", fake_stage(fail_at=512))
    with pytest.raises(KeyboardInterrupt):
        demo.run(demo.DemoConfig(models_dir=str(models)))
    assert not (models / "manifest.json").exists()  # `make serve` will build again
    assert (models / demo.STAGING_DIR / "manifest.json").is_file()  # the finished 256 px


def test_a_finished_build_writes_one_manifest_with_every_stage(
    fake_inputs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = tmp_path / "models"
    monkeypatch.setattr(demo, "build_stage", fake_stage())
    with caplog.at_level(logging.INFO, logger="training.demo"):
        summary = demo.run(demo.DemoConfig(models_dir=str(models)))
    assert [e.resolution for e in read_manifest(models).models] == [256, 512, 1024]
    assert not (models / demo.STAGING_DIR).exists()
    assert [m["onnx"] for m in summary["models"]] == [f"{NAME}-{r}.onnx" for r in (256, 512, 1024)]
    assert summary["models"][1]["initialised_from"] == "runs/256/best.pt"
    lines = [r.getMessage() for r in caplog.records]
    assert "stage 1 of 3: 256 px, time budget 60 s, peak LR 0.001, from scratch" in lines
    assert any(line.startswith("stage 3 of 3: 1024 px model done in 1.0 s: test AUROC 0.750 "
                               "(site a), 0.700 (site b)") for line in lines)  # fmt: skip
    assert any(line.startswith("phantoms: ready in") for line in lines)
    assert any(line.startswith("input cache: ready in") for line in lines)


def test_logging_is_info_by_default_and_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    levels = {name: logging.getLogger(name).level for name in ("", *demo.NOISY_AT_INFO)}
    try:
        logging.getLogger().setLevel(logging.INFO)  # what the mocked basicConfig would set
        monkeypatch.delenv("SHARPCXR_LOG_LEVEL", raising=False)
        demo.configure_logging()
        assert all(logging.getLogger(n).level == logging.WARNING for n in demo.NOISY_AT_INFO)
        monkeypatch.setenv("SHARPCXR_LOG_LEVEL", "debug")
        demo.configure_logging()
    finally:
        for name, level in levels.items():  # configure_logging changes them: restore
            logging.getLogger(name).setLevel(level)
    assert [c["level"] for c in calls] == ["INFO", "DEBUG"]
    assert calls[0]["format"] == "%(asctime)s %(levelname)s %(message)s"
