"""From a :class:`TrainConfig` to records and a patient-level train/validation split."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig
from training.datasets import (
    NIH_LABELS,
    PNEUMOTHORAX,
    Record,
    load_chexpert,
    load_nih,
    load_phantoms,
    load_siim,
    patient_holdout_split,
    patient_kfold,
)


def label_names(cfg: TrainConfig) -> list[str]:
    """The model's output labels, in order (pneumothorax first when it is the only one)."""
    if cfg.labels == "all" and cfg.dataset in ("nih", "chexpert"):
        return list(NIH_LABELS) if cfg.dataset == "nih" else _chexpert_labels()
    return [PNEUMOTHORAX]


def _chexpert_labels() -> list[str]:
    from training.datasets.chexpert import CHEXPERT_LABELS

    return list(CHEXPERT_LABELS)


def load_records(cfg: TrainConfig, root: str | None = None) -> list[Record]:
    """Records of ``root`` (default: the config's ``data_root``) for the config's dataset."""
    path = Path(root or cfg.data_root)
    if not path.exists():
        raise FileNotFoundError(
            f"data root {path} does not exist; for phantoms run "
            f"`sharpcxr phantoms {path} --n 200` first"
        )
    if cfg.dataset == "phantoms":
        return load_phantoms(path)
    if cfg.dataset == "siim":
        return load_siim(path)
    if cfg.dataset == "nih":
        return load_nih(path, labels=cfg.labels)
    assert cfg.chexpert_csv is not None
    return load_chexpert(
        Path(cfg.chexpert_csv), path, labels=cfg.labels, uncertain=cfg.uncertain, seed=cfg.seed
    )


#: offset between the training seed and the test hold-out's, so that the test cases stay the
#: same whatever split of the rest a run uses
_TEST_SPLIT_SALT = 104_729


def split_test_set(cfg: TrainConfig, records: list[Record]) -> tuple[list[Record], list[Record]]:
    """``(development, test)``: the patient-level ``test_fraction`` hold-out of ``records``.

    Depends only on the records, ``test_fraction`` and ``seed``: every fold and resolution of
    a study sees the same test cases. ``test_fraction`` 0: no test cases.
    """
    if cfg.test_fraction <= 0:
        return list(records), []
    return patient_holdout_split(records, fraction=cfg.test_fraction,
                                 seed=cfg.seed + _TEST_SPLIT_SALT)  # fmt: skip


def split_records(cfg: TrainConfig, records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Patient-level ``(train, validation)`` split of what :func:`split_test_set` leaves: k-fold
    when ``folds > 1``, else a ``holdout_fraction`` hold-out."""
    records, _ = split_test_set(cfg, records)
    if cfg.folds > 1:
        return patient_kfold(records, k=cfg.folds, seed=cfg.seed)[cfg.fold]
    return patient_holdout_split(records, fraction=cfg.holdout_fraction, seed=cfg.seed)
