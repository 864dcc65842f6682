"""Training data: loaders for SIIM-ACR, phantoms, NIH ChestX-ray14 and CheXpert, patient-level
splits, augmentation, and a torch dataset whose inputs come from :mod:`imaging` exactly as the
service computes them (cached on disk so DICOMs are decoded once).
"""

from __future__ import annotations

from training.datasets.augment import Augment, AugmentParams
from training.datasets.chexpert import CHEXPERT_LABELS, load_chexpert
from training.datasets.nih import load_nih
from training.datasets.records import NIH_LABELS, PNEUMOTHORAX, Record, record_mask
from training.datasets.siim import load_phantoms, load_siim
from training.datasets.splits import patient_holdout_split, patient_kfold
from training.datasets.torch_dataset import (
    CXRDataset,
    PrefillReport,
    PreprocessCache,
    prefill_cache,
)

__all__ = [
    "CHEXPERT_LABELS",
    "NIH_LABELS",
    "PNEUMOTHORAX",
    "Augment",
    "AugmentParams",
    "CXRDataset",
    "PrefillReport",
    "PreprocessCache",
    "Record",
    "load_chexpert",
    "load_nih",
    "load_phantoms",
    "load_siim",
    "patient_holdout_split",
    "patient_kfold",
    "prefill_cache",
    "record_mask",
]
