"""A training smoke test per dataset format, on small files in that format written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrmodel.checkpoint import load_checkpoint
from tests.training.test_datasets import write_chexpert, write_nih, write_siim
from training.config import TrainConfig
from training.data import label_names
from training.loop import train


def run(tmp_path: Path, **fields: object) -> dict:
    cfg = TrainConfig(
        resolution=64, architecture="compact", batch_size=2, max_epochs=1, num_workers=0,
        out_dir=str(tmp_path / "run"), cache_dir=None, progress=False,
        holdout_fraction=0.34, augment_strength=0.5, **fields,  # type: ignore[arg-type]
    )  # fmt: skip
    result = train(cfg)
    assert result.epochs_run == 1 and result.best_checkpoint.exists()
    state = load_checkpoint(result.best_checkpoint)
    assert state["model_config"]["labels"] == label_names(cfg)
    return state


def test_train_on_siim_format(tmp_path: Path) -> None:
    write_siim(tmp_path / "siim")
    state = run(tmp_path, dataset="siim", data_root=str(tmp_path / "siim"))
    assert state["model_config"]["num_classes"] == 1


@pytest.mark.parametrize("labels", ["pneumothorax", "all"])
def test_train_on_nih_format(tmp_path: Path, labels: str) -> None:
    write_nih(tmp_path / "nih")
    state = run(tmp_path, dataset="nih", data_root=str(tmp_path / "nih"), labels=labels)
    assert state["model_config"]["num_classes"] == (14 if labels == "all" else 1)


@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones", "random"])
def test_train_on_chexpert_format(tmp_path: Path, uncertain: str) -> None:
    csv_path = write_chexpert(tmp_path / "chexpert")
    state = run(
        tmp_path, dataset="chexpert", data_root=str(tmp_path / "chexpert"),
        chexpert_csv=str(csv_path), uncertain=uncertain,
        labels="all" if uncertain == "random" else "pneumothorax",
    )  # fmt: skip
    assert state["train_config"]["uncertain"] == uncertain
