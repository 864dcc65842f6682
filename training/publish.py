"""After training: fit calibration and OOD, evaluate on test sets, export, record.

``evaluate_checkpoint`` adds test metrics (AUROC with its data, sensitivity/specificity at
the validation threshold, ECE before/after calibration, the fraction flagged out of
distribution) to the checkpoint; ``publish`` writes the ONNX model (with the in-graph
Grad-CAM and embedding), a TensorRT plan where TensorRT is installed, the torch weights
for the reference backend, the OOD feature statistics, and the manifest entry the
service loads. Both first fit (once, then cached in the checkpoint under ``trust``) the
temperature and the OOD statistics on the checkpoint's own train/validation split
(:mod:`training.trust`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cxrmodel.calibration import calibrated_threshold
from cxrmodel.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxrmodel.manifest import CalibrationSpec, OodSpec, new_entry, upsert_entry
from cxrmodel.networks import CXRClassifier
from cxrmodel.ood import FEATURE, METHOD
from cxrmodel.tensorrt import tensorrt_status
from imaging.errors import ImagingError
from imaging.preprocess import NORMALISATION
from training.config import TrainConfig
from training.data import load_records, split_records
from training.datasets import CXRDataset, PreprocessCache, Record
from training.evaluate import (
    THRESHOLD_RULE,
    Predictions,
    auroc,
    predict,
    sensitivity_specificity,
)
from training.export import build_tensorrt_plan, export_onnx
from training.loop import resolve_device
from training.trust import TrustFit, fit_trust

logger = logging.getLogger(__name__)

SYNTHETIC_USE = (
    "Synthetic demo, not for clinical use: trained and evaluated on synthetic chest X-ray "
    "phantoms only, to exercise the pipeline. It has never seen a real radiograph."
)
RESEARCH_USE = (
    "Research use only; not a medical device. Pneumothorax probability for frontal chest "
    "radiographs, validated only on the data named in metrics."
)


def protocol_summary(cfg: TrainConfig) -> str:
    """One line on how the model was trained: the protocol or what departs from it."""
    schedule = "LR/10 on plateau" if cfg.lr_schedule == "plateau" else "cosine LR schedule"
    kept = "best validation AUROC kept" if cfg.keep == "best" else "last epoch kept"
    base = (
        "Wollek et al."
        if (cfg.lr_schedule, cfg.keep) == ("plateau", "best")
        else ("Wollek et al. with departures")
    )
    return f"{base} (BCE, AdamW, {schedule}, early stop, {kept}), see config"


def _validation_data(cfg: TrainConfig) -> str:
    return f"patient-level validation split of {cfg.data_root} ({cfg.holdout_fraction:.0%})"


class _Evaluator:
    """A checkpoint's model on its device with its preprocessing cache."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.cfg = TrainConfig.from_dict(state["train_config"])
        self.device = resolve_device(self.cfg.device)
        self.model: CXRClassifier = model_from_checkpoint(state, channels_last=True)
        self.model.to(self.device)
        cfg = self.cfg
        self.cache = PreprocessCache(Path(cfg.cache_dir) if cfg.cache_dir else None)

    def predict(self, records: list[Record]) -> tuple[Predictions, int]:
        """Predictions on the usable ``records``, and how many were refused."""
        usable, refused = usable_records(records, self.cfg.resolution, self.cache)
        loader = DataLoader(
            CXRDataset(usable, self.cfg.resolution, cache=self.cache),
            batch_size=self.cfg.effective_batch_size,
            num_workers=self.cfg.num_workers,
        )
        return predict(self.model, loader, self.device), refused


def checkpoint_trust(path: Path, state: dict[str, Any], evaluator: _Evaluator) -> TrustFit:
    """The checkpoint's calibration and OOD fit, fitted now (and saved into the
    checkpoint) unless it holds one already."""
    if "trust" in state:
        return TrustFit.from_state(state["trust"])
    cfg = evaluator.cfg
    train_records, val_records = split_records(cfg, load_records(cfg))
    train, _ = evaluator.predict(train_records)
    validation, _ = evaluator.predict(val_records)
    trust = fit_trust(train, validation, _validation_data(cfg))
    state["trust"] = trust.to_state()
    save_checkpoint(path, state)
    measured = trust.validation_calibration
    logger.info(
        f"calibration and OOD fitted ({cfg.resolution} px): temperature {trust.temperature:.3f}, "
        f"validation ECE {measured['before']:.3f} -> {measured['after']:.3f}, cross-entropy "
        f"{measured['nll_before']:.3f} -> {measured['nll_after']:.3f}; OOD threshold "
        f"{trust.ood_threshold:.2f} from {trust.n_validation} validation images, statistics "
        f"from {trust.n_fit} training images"
    )
    return trust


def evaluate_checkpoint(path: Path, test_roots: dict[str, str]) -> dict[str, Any]:
    """Evaluate ``path`` on each named test root; store and return the metrics."""
    state = load_checkpoint(path)
    evaluator = _Evaluator(state)
    trust = checkpoint_trust(path, state, evaluator)
    metrics: dict[str, Any] = dict(state.get("metrics", {}))
    for name, root in test_roots.items():
        preds, refused = evaluator.predict(load_records(evaluator.cfg, root))
        y, p = preds.labels[:, 0], preds.probabilities[:, 0]
        sens, spec = sensitivity_specificity(y, p, float(state["threshold"]))
        metrics[name] = {
            "auroc": auroc(y, preds.logits[:, 0]),
            "sensitivity": sens,
            "specificity": spec,
            "n": len(y),
            "positives": int((y > 0.5).sum()),
            "refused": refused,
            "data": str(root),
            "ece": trust.calibration(preds),
            "ood_flagged": trust.flagged(preds),
        }
        m = metrics[name]
        logger.info(
            f"test set {name}: AUROC {m['auroc']:.3f} on {m['n']} images ({refused} refused), "
            f"ECE {m['ece']['before']:.3f} -> {m['ece']['after']:.3f}, "
            f"{m['ood_flagged']:.1%} flagged out of distribution"
        )
    state["metrics"] = metrics
    save_checkpoint(path, state)
    return metrics


def usable_records(
    records: list[Record], resolution: int, cache: PreprocessCache
) -> tuple[list[Record], int]:
    """The records the imaging path accepts, and how many it refused.

    The training dataset replaces a refused image by the next one; a test set must not,
    or its metrics would count some cases twice, so refused cases are dropped and counted.
    """
    usable = []
    for record in records:
        try:
            cache.get(record, resolution)
        except ImagingError:
            continue
        usable.append(record)
    return usable, len(records) - len(usable)


def publish(
    checkpoint: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    tensorrt: str = "auto",
    int8_calibration: int = 0,
    intended_use: str | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` into ``models_dir`` and add it to the manifest; return the
    entry (as JSON).

    ``tensorrt``: ``auto`` (build a plan when TensorRT and a GPU are present), ``on``
    (fail without them) or ``off``. ``int8_calibration``: > 0 builds an INT8 plan
    calibrated on that many validation-style inputs (phantoms/training data).
    """
    state = load_checkpoint(checkpoint)
    evaluator = _Evaluator(state)
    trust = checkpoint_trust(checkpoint, state, evaluator)
    cfg = evaluator.cfg
    model = model_from_checkpoint(state)
    config = state["model_config"]
    resolution = int(config["resolution"])
    name = name or f"{config['architecture']}-{config['downsample']}-{cfg.dataset}"
    models_dir = Path(models_dir).resolve()
    models_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{resolution}"
    files: dict[str, Path] = {"onnx": export_onnx(model, resolution, models_dir / f"{stem}.onnx")}
    weights = models_dir / f"{stem}.pt"
    torch.save({"model_state": model.state_dict(), "model_config": config}, weights)
    files["pt"] = weights
    files["ood"] = trust.statistics.save(models_dir / f"{stem}-ood.npz")
    if tensorrt == "on" or (tensorrt == "auto" and tensorrt_status()[0]):
        calibration = _calibration_inputs(cfg, int8_calibration) if int8_calibration else None
        files["plan"] = build_tensorrt_plan(
            files["onnx"], models_dir / f"{stem}.plan", resolution=resolution,
            int8_calibration=calibration,
        )  # fmt: skip
    tests = state.get("metrics", {})
    threshold = float(state["threshold"])
    validation = {"n": trust.n_validation, "data": _validation_data(cfg)}
    entry = new_entry(
        name=name,
        version=version,
        resolution=resolution,
        architecture=config["architecture"],
        downsample=config["downsample"],
        files=files,
        models_dir=models_dir,
        labels=list(config["labels"]),
        embedding_size=model.embedding_size,
        threshold=calibrated_threshold(threshold, trust.temperature),
        threshold_rule=f"{THRESHOLD_RULE}, moved to the calibrated probability",
        normalisation=NORMALISATION,
        calibration=CalibrationSpec(
            temperature=trust.temperature,
            fitted_on=validation["data"],
            threshold_uncalibrated=threshold,
            ece=json_safe(
                {"validation": {**trust.validation_calibration, **validation}}
                | {k: {**v["ece"], "data": v["data"]} for k, v in tests.items() if "ece" in v}
            ),
        ),
        ood=OodSpec(
            method=METHOD,
            feature=FEATURE,
            threshold=trust.ood_threshold,
            threshold_rule=trust.ood_rule,
            fitted_on=f"training split of {cfg.data_root} ({trust.n_fit} images)",
            n_fit=trust.n_fit,
            shrinkage=trust.shrinkage,
            flagged=json_safe(
                {"validation": {"rate": trust.validation_flagged, **validation}}
                | {
                    k: {"rate": v["ood_flagged"], "n": v["n"], "data": v["data"]}
                    for k, v in tests.items()
                    if "ood_flagged" in v
                }
            ),
        ),
        # The test sets' ECE and OOD rates live in calibration / ood, not twice.
        metrics=json_safe(
            {"validation": {**state.get("val", {}), "data": validation["data"]}}
            | {k: _without(v, "ece", "ood_flagged") for k, v in tests.items()}
        ),
        training={
            "data": cfg.data_root,
            "dataset": cfg.dataset.value,
            "protocol": protocol_summary(cfg),
            "seed": cfg.seed,
            "best_epoch": int(state["epoch"]),
            "config": cfg.to_dict(),
        },
        intended_use=intended_use or (SYNTHETIC_USE if cfg.dataset == "phantoms" else RESEARCH_USE),
    )
    upsert_entry(models_dir, entry)
    return entry.model_dump(mode="json")


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def json_safe(value: Any) -> Any:
    """``value`` for strict JSON, recursively: non-finite floats -> None, numpy scalars ->
    Python numbers, tuples -> lists, dict keys -> str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _calibration_inputs(cfg: TrainConfig, n: int) -> Any:
    """``n`` preprocessed training inputs, float32 ``[n, 1, R, R]``, for INT8 calibration."""
    import numpy as np

    records = load_records(cfg)[:n]
    dataset = CXRDataset(records, cfg.resolution, cache=PreprocessCache(None))
    return np.stack([dataset[i]["image"].numpy() for i in range(len(dataset))])
