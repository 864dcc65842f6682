"""Training configuration: every default in one visible block.

The defaults are the published protocol (Wollek et al., "Higher Chest X-ray Resolution
Improves Classification Performance"): binary cross-entropy, AdamW with learning rate
3e-4 and weight decay 1e-4, the learning rate divided by 10 after 2 epochs without a
validation-loss improvement, training stopped after 10 such epochs, batch 64 at 64 px,
12 at 1024 px and 16 otherwise, and the best checkpoint chosen by validation AUROC.
A checkpoint carries this whole config, so a run can be resumed or reproduced from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from cxrmodel.resolution import check_resolution
from cxrmodel.vocab import Architecture, Dataset, Downsample

LR_SCHEDULES = ("plateau", "cosine")


def default_batch_size(resolution: int) -> int:
    """The protocol's batch size: 64 at 64 px, 12 at 1024 px (and above), 16 otherwise."""
    if resolution <= 64:
        return 64
    if resolution >= 1024:
        return 12
    return 16


@dataclass
class TrainConfig:
    # ---- data ------------------------------------------------------------------------
    dataset: Dataset = Dataset.PHANTOMS  # phantoms | siim | nih | chexpert
    data_root: str = "data/phantoms/train"
    labels: str = "pneumothorax"  # pneumothorax | all (NIH / CheXpert: the 14 findings)
    chexpert_csv: str | None = None  # CheXpert: train.csv (data_root = the folder above Path)
    uncertain: str = "ignore"  # CheXpert uncertain labels: ignore | zeros | ones | random
    holdout_fraction: float = 0.1  # patient-level validation hold-out
    test_fraction: float = 0.0  # > 0: a patient-level test hold-out, removed from data_root
    # before any train/validation split and never trained on (the study's in-distribution test)
    folds: int = 1  # > 1: k-fold cross-validation, validation = fold `fold`
    fold: int = 0
    test_roots: dict[str, str] = field(default_factory=dict)  # name -> root, evaluated at the end
    cache_dir: str | None = "data/cache"  # preprocessed model inputs (None: memory only)
    # ---- model -----------------------------------------------------------------------
    resolution: int = 1024
    architecture: Architecture = Architecture.DENSENET121  # densenet121 | compact (CPU demos)
    downsample: Downsample = Downsample.STANDARD  # standard | blurpool | flc | asap
    pretrained: str | None = None  # local torchvision ImageNet state dict; nothing downloads
    init_from: str | None = None  # a sharpcxr checkpoint whose weights start this run (e.g.
    # the same architecture trained at a lower resolution: progressive resizing)
    # ---- protocol (Wollek et al.) ----------------------------------------------------
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lr_factor: float = 0.1  # divide by 10 ...
    lr_patience: int = 2  # ... after 2 epochs without validation-loss improvement
    early_stop_patience: int = 10  # stop after 10 epochs without improvement
    max_epochs: int = 100
    lr_schedule: str = "plateau"  # plateau (the protocol, above) | cosine: linear warm-up over
    # warmup_fraction of the run, then cosine decay to 0 at its end: the end of the time
    # budget when one is set, else max_epochs (budgeted training, e.g. `make models`; under
    # torchrun only max_epochs; see training.schedule)
    warmup_fraction: float = 0.05
    keep: str = "best"  # best: the checkpoint of the best validation AUROC (the protocol) |
    # last: the final epoch's (with a cosine schedule the annealed end; a 96-image
    # validation AUROC picks an early epoch by noise). Early stopping still applies: raise
    # early_stop_patience if the run must reach the end of its schedule.
    batch_size: int | None = None  # None: default_batch_size(resolution)
    augment_strength: float = 1.0  # 0 = no augmentation; scales rotation/scale/intensity
    augment_gamma: float = 0.0  # > 0: also a tone-curve change display ** g, |log g| <=
    # log(1 + augment_gamma) (off by default; see training.datasets.augment)
    # ---- machinery -------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision (CUDA only)
    channels_last: bool = True  # CUDA and CPU (on CPU oneDNN trains 1.2-1.8x faster from 256 px)
    gradient_checkpointing: str = "auto"  # auto (on at >= 768 px) | on | off
    num_workers: int = 2
    out_dir: str = "runs/run"
    resume: bool = True  # continue from out_dir/last.pt when it exists
    time_budget_s: float | None = None  # stop after the epoch that crosses this budget
    max_train_batches: int | None = None  # per epoch (smoke tests)
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        # The vocabularies accept their strings (from flags, dicts, old checkpoints).
        self.dataset = enum_member(Dataset, self.dataset, "dataset")
        self.architecture = enum_member(Architecture, self.architecture, "architecture")
        self.downsample = enum_member(Downsample, self.downsample, "downsample")

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or default_batch_size(self.resolution)

    def checkpointing_enabled(self) -> bool:
        if self.gradient_checkpointing == "auto":
            return self.resolution >= 768
        return self.gradient_checkpointing == "on"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and the allowed values."""
        if self.labels not in ("pneumothorax", "all"):
            raise ValueError(f"labels must be 'pneumothorax' or 'all', got {self.labels!r}")
        if self.dataset == "chexpert" and not self.chexpert_csv:
            raise ValueError("CheXpert needs --chexpert-csv (the train.csv of the release)")
        check_resolution(self.resolution)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.folds > 1 and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise ValueError("gradient_checkpointing must be auto, on or off")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings)."""
        plain: dict[str, Any] = json_plain(dataclasses.asdict(self))
        return plain

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from a checkpoint's dict, ignoring keys of other versions."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


E = TypeVar("E", bound=Enum)


def enum_member(enum: type[E], value: object, name: str) -> E:
    """``enum(value)``, or ``ValueError`` naming the field and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def json_plain(value: Any) -> Any:
    """``value`` with every enum replaced by its value, recursively (dicts, lists, tuples)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: json_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(json_plain(v) for v in value)
    return value
