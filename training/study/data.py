"""The study's data: a development pool (k-fold cross-validation plus an in-distribution
test hold-out) and external test sets, as records, with per-image facts for stratification.

With phantoms and no ``data_root`` the study writes its own sets under ``data_dir``: site
``a`` for development and site ``b`` (another acquisition: contrast curve, noise, spacing,
photometric, collimation, markers) as the external set. Written once and reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from imaging.phantoms import PhantomSetSpec, write_phantom_sets
from training.config import TrainConfig
from training.data import load_records, split_test_set
from training.datasets import PreprocessCache, Record
from training.publish import usable_records
from training.study.config import StudyConfig

logger = logging.getLogger(__name__)

#: the seed offset of the external phantom set (as the demo's site-b test set)
EXTERNAL_SEED_OFFSET = 2000


@dataclass(frozen=True)
class StudyData:
    """Where the data is and the two test sets as records (images the imaging path refuses
    are dropped from test sets and counted, never replaced: a case must count once).

    ``size_of``: phantom ``image_id -> size_fraction`` (0 tiny .. 1 large) for positives,
    used to stratify AUROC by finding size; empty for real data.
    """

    development_root: Path
    external_roots: dict[str, Path]
    test: list[Record]
    external: dict[str, list[Record]]
    refused: dict[str, int]
    size_of: dict[str, float]


def phantom_roots(cfg: StudyConfig) -> tuple[Path, dict[str, Path]]:
    """Where the study's phantom sets live (the folder name carries what makes them)."""
    base = Path(cfg.data_dir) / f"phantoms-{cfg.phantom_size}px-seed{cfg.seed}"
    return (base / f"site-a-{cfg.phantoms_development}",
            {"site_b": base / f"site-b-{cfg.phantoms_external}"})  # fmt: skip


def write_study_phantoms(cfg: StudyConfig, workers: int = 2) -> tuple[Path, dict[str, Path]]:
    """Write (or reuse) the development and external phantom sets, in parallel."""
    development, external = phantom_roots(cfg)
    write_phantom_sets([
        PhantomSetSpec(development, "a", cfg.phantoms_development, cfg.seed),
        PhantomSetSpec(external["site_b"], "b", cfg.phantoms_external,
                       cfg.seed + EXTERNAL_SEED_OFFSET),
    ], size=cfg.phantom_size, workers=workers)  # fmt: skip
    return development, external


def train_config(cfg: StudyConfig, development_root: Path, resolution: int) -> TrainConfig:
    """The study's base training config at ``resolution`` (fold and output set per run)."""
    return TrainConfig(
        dataset=cfg.dataset,
        data_root=str(development_root),
        test_fraction=cfg.test_fraction,
        folds=cfg.folds,
        resolution=resolution,
        architecture=cfg.architecture,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size or None,
        augment_strength=cfg.augment_strength,
        augment_gamma=cfg.augment_gamma,
        max_epochs=cfg.epochs,
        device=cfg.device,
        num_workers=cfg.num_workers,
        cache_dir=str(Path(cfg.data_dir) / "cache"),
        seed=cfg.seed,
        progress=False,
        # The compact model fits at every study resolution; DenseNet-121 uses the default.
        gradient_checkpointing="off" if cfg.architecture == "compact" else "auto",
    )


def _sizes(root: Path) -> dict[str, float]:
    path = root / "phantoms.json"
    if not path.is_file():
        return {}
    images = json.loads(path.read_text()).get("images", [])
    return {str(m["image_id"]): float(m["size_fraction"])
            for m in images if m.get("size_fraction") is not None}  # fmt: skip


def load_records_for(
    base: TrainConfig, root: Path, resolution: int, cache: PreprocessCache
) -> list[Record]:
    """Every record of ``root`` the imaging path accepts at ``resolution`` (refused: dropped)."""
    records, refused = usable_records(load_records(base, str(root)), resolution, cache)
    if refused:
        logger.warning("%d images of %s refused by the imaging path", refused, Path(root).name)
    return records


def load_study_data(cfg: StudyConfig, resolution: int) -> StudyData:
    """The test sets usable at ``resolution`` (writing phantoms first when needed)."""
    if cfg.data_root is None:
        development, external = write_study_phantoms(cfg)
    else:
        development, external = Path(cfg.data_root), {k: Path(v) for k, v in cfg.external.items()}
    base = train_config(cfg, development, resolution)
    cache = PreprocessCache(Path(base.cache_dir) if base.cache_dir else None)
    _, test = split_test_set(base, load_records(base))
    test, refused_test = usable_records(test, resolution, cache)
    sets, refused = {}, {"test": refused_test}
    for name, root in external.items():
        sets[name], refused[name] = usable_records(load_records(base, str(root)), resolution, cache)
    sizes = _sizes(development)
    for root in external.values():
        sizes.update(_sizes(root))
    return StudyData(development_root=development, external_roots=external, test=test,
                     external=sets, refused=refused, size_of=sizes)  # fmt: skip
