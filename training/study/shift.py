"""Why does the external set fail? A distribution-shift ablation (phantom studies only).

Site ``b`` differs from site ``a`` in several acquisition factors at once. To attribute the
in/out-of-distribution gap, each factor is applied **alone** to site-``a`` phantoms with the
same anatomy and findings (same seed, same indices), and every finished resolution's fold
ensemble is scored on each variant. Cases are identical across variants except for that
factor, so the paired DeLong test against the unshifted variant isolates its effect.

The ``storage`` variant only changes how pixels are stored (MONOCHROME1, CR, a rescale):
the imaging path normalises that away, so it must cost nothing. It is a pipeline check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxrmodel.checkpoint import load_checkpoint, model_from_checkpoint
from imaging.phantoms import PhantomSetSpec, write_phantom_sets
from training.datasets import PreprocessCache
from training.loop import resolve_device
from training.statistics import auroc_ci, paired_delong
from training.study.config import StudyConfig
from training.study.data import load_records_for, train_config
from training.study.evaluate import infer

logger = logging.getLogger(__name__)

#: site ``b``'s value of each factor, applied alone to site ``a`` (imaging.phantoms.acquisition)
SHIFT_FACTORS: dict[str, dict[str, Any]] = {
    "none": {},
    "contrast curve": {"curve": "gamma", "curve_center": 0.0, "curve_width": 1.0, "gamma": 1.7},
    "noise (1/4 photons)": {"photons_per_mm2": 15000.0},
    "positioning (±4°, 430 mm field)": {"max_rotation_deg": 4.0, "field_of_view_mm": 430.0},
    "collimation + marker": {"collimation": 0.05, "collimation_value": 0.97, "marker": "R"},
    "storage (MONOCHROME1, CR, rescale)": {"photometric": "MONOCHROME1", "modality": "CR",
                                           "rescale": True},
}  # fmt: skip
SHIFT_FACTORS["all of site b"] = {k: v for f in SHIFT_FACTORS.values() for k, v in f.items()}

#: the variants' seed offset (their own anatomy: not the development or external cases)
SHIFT_SEED_OFFSET = 3000


def shift_roots(cfg: StudyConfig) -> dict[str, Path]:
    base = Path(cfg.data_dir) / f"phantoms-{cfg.phantom_size}px-seed{cfg.seed}" / "shift"
    return {name: base / f"{i}-{cfg.phantoms_external}" for i, name in enumerate(SHIFT_FACTORS)}


def write_shift_sets(cfg: StudyConfig, workers: int = 2) -> dict[str, Path]:
    roots = shift_roots(cfg)
    seed = cfg.seed + SHIFT_SEED_OFFSET
    write_phantom_sets([PhantomSetSpec(root, "a", cfg.phantoms_external, seed, SHIFT_FACTORS[name])
                        for name, root in roots.items()],
                       size=cfg.phantom_size, workers=workers)  # fmt: skip
    return roots


def run_shift(cfg: StudyConfig, downsample: str, resolution: int, run: Path) -> Path:
    """Score the fold ensemble of ``run`` (a finished resolution) on every variant."""
    out = run / "shift.npz"
    if out.exists():
        return out
    roots = write_shift_sets(cfg)
    base = train_config(cfg, Path(cfg.data_dir), resolution)
    cache = PreprocessCache(Path(base.cache_dir) if base.cache_dir else None)
    device = resolve_device(cfg.device)
    checkpoints = [load_checkpoint(run / f"fold-{k}" / "best.pt") for k in range(cfg.folds)]
    models = [model_from_checkpoint(c, channels_last=True).to(device) for c in checkpoints]
    arrays: dict[str, Any] = {}
    for i, (name, root) in enumerate(roots.items()):
        records = load_records_for(base, root, resolution, cache)
        logits = [infer(m, records, resolution, cache, device, base.effective_batch_size)
                  for m in models]  # fmt: skip
        arrays[f"{i}.name"] = np.array(name)
        arrays[f"{i}.labels"] = logits[0].labels
        arrays[f"{i}.logits"] = np.mean([inf.logits for inf in logits], axis=0)
    np.savez_compressed(out, **arrays)
    logger.info("shift ablation", extra={"downsample": downsample, "resolution": resolution})
    return out


def analyse_shift(path: Path) -> dict[str, Any]:
    """``{factor: {auroc, difference vs none, p (paired DeLong)}}`` from ``shift.npz``."""
    with np.load(path) as z:
        count = len({k.split(".")[0] for k in z.files})
        sets = {str(z[f"{i}.name"]): (z[f"{i}.labels"], z[f"{i}.logits"]) for i in range(count)}
    labels, reference = sets["none"]
    out: dict[str, Any] = {}
    for name, (y, logits) in sets.items():
        if not np.array_equal(y, labels):
            raise ValueError(f"shift variant {name!r} has other labels than 'none'")
        entry: dict[str, Any] = {"auroc": auroc_ci(y, logits).to_dict()}
        if name != "none":
            test = paired_delong(y, logits, reference)
            entry.update(difference=test.difference, p=test.p_value)
        out[name] = entry
    return out
