"""The resolution study's configuration: every default in one visible block.

The defaults are the CPU phantom study of ``make study`` (compact DenseNet, 64-512 px,
3-fold cross-validation, ~25 minutes on 2 cores). The full DenseNet-121 study on a GPU
changes the architecture, the resolutions and the sizes (README, "Resolution study").

Why the training schedule is the same at every resolution: the published protocol trains
each resolution to convergence; on a CPU budget a fixed number of epochs (with the
protocol's LR plateau and early stop inside it) is the fair stand-in. A time budget would
give low resolutions many more epochs than high ones and confound resolution with training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrmodel.resolution import check_resolution
from cxrmodel.vocab import Architecture, Dataset, Downsample
from training.config import enum_member, json_plain


@dataclass
class StudyConfig:
    # ---- identity and places -----------------------------------------------------------
    name: str = "phantom-compact"
    reports_dir: str = "reports"  # the report goes to reports_dir/name
    runs_dir: str = "runs/study"  # checkpoints and per-case predictions (resumable)
    # ---- data ------------------------------------------------------------------------
    dataset: Dataset = Dataset.PHANTOMS  # phantoms | siim | nih | chexpert (TrainConfig.dataset)
    data_root: str | None = None  # None with phantoms: generated under data_dir
    external: dict[str, str] = field(default_factory=dict)  # name -> root (out of distribution)
    data_dir: str = "data/study"  # generated phantoms and the preprocessing cache
    phantoms_development: int = 720  # site a: the k-fold pool plus the test hold-out
    phantoms_external: int = 240  # site b: the external test set
    phantom_size: int = 1024  # native rows = columns (SIIM-ACR's size)
    test_fraction: float = 1 / 3  # patient-level in-distribution test hold-out
    # ---- the axes --------------------------------------------------------------------
    resolutions: tuple[int, ...] = (64, 128, 256, 512)
    architecture: Architecture = Architecture.COMPACT  # compact | densenet121
    downsamples: tuple[Downsample, ...] = (Downsample.STANDARD,)  # standard | blurpool | flc | asap
    folds: int = 3
    # ---- training, the same at every resolution (module docstring) -------------------
    epochs: int = 10
    batch_size: int = 16  # 0: the protocol's per-resolution batch (64 at 64 px, 12 at 1024)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment_strength: float = 0.5
    augment_gamma: float = 0.0  # > 0: tone-curve augmentation (TrainConfig.augment_gamma)
    hpo_trials: int = 0  # > 0: Optuna per resolution on fold 0, best params for every fold
    device: str = "auto"
    num_workers: int = 0  # inputs are cached in memory; workers would only copy them
    seed: int = 0
    # ---- evaluation ------------------------------------------------------------------
    saliency_threshold: float = 0.5
    box_iou_threshold: float = 0.1  # Wollek et al.'s loose box criterion
    bootstrap_resamples: int = 2000
    grid_cases: int = 4  # hold-out positives shown in the saliency grid (small to large)
    shift_ablation: bool = True  # generated phantoms only: which site-b factor costs what

    def __post_init__(self) -> None:
        # The vocabularies accept their strings (from flags and the resumed study.json).
        self.dataset = enum_member(Dataset, self.dataset, "dataset")
        self.architecture = enum_member(Architecture, self.architecture, "architecture")
        self.downsamples = tuple(enum_member(Downsample, d, "downsample") for d in self.downsamples)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and the allowed values."""
        if not self.downsamples:
            raise ValueError("downsamples must name at least one of standard, blurpool, flc, asap")
        if not self.resolutions:
            raise ValueError("resolutions must name at least one resolution")
        for resolution in self.resolutions:
            check_resolution(resolution)
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 (k-fold cross-validation), got {self.folds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.data_root is None and self.dataset != "phantoms":
            raise ValueError(f"dataset {self.dataset} needs --data-root")
        bad_names = [
            n
            for n in self.external
            if n == "test" or not n.replace("_", "").replace("-", "").isalnum()
        ]
        if bad_names:
            raise ValueError(f"external set names must be letters, digits, _ or - and not "
                             f"'test', got {bad_names}")  # fmt: skip
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")

    @property
    def report_dir(self) -> Path:
        return Path(self.reports_dir) / self.name

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings, tuples kept)."""
        return json_plain(dataclasses.asdict(self))
