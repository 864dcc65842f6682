"""After training: evaluate a checkpoint on test sets, then export it and record it.

``evaluate_checkpoint`` adds test metrics (AUROC with its data, sensitivity/specificity at
the validation threshold) to the checkpoint; ``publish`` writes the ONNX model (with the
in-graph Grad-CAM), a TensorRT plan where TensorRT is installed, the torch weights for the
reference backend, and the manifest entry the service loads.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from imaging.errors import ImagingError
from training.config import TrainConfig
from training.data import load_records
from training.datasets import CXRDataset, PreprocessCache, Record
from training.evaluate import (
    THRESHOLD_RULE,
    auroc,
    predict,
    sensitivity_specificity,
)
from training.export import build_tensorrt_plan, export_onnx, tensorrt_available
from training.loop import load_checkpoint, model_from_checkpoint, resolve_device, save_checkpoint
from training.manifest import manifest_entry, update_manifest

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


def evaluate_checkpoint(path: Path, test_roots: dict[str, str]) -> dict[str, Any]:
    """Evaluate ``path`` on each named test root; store and return the metrics."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["train_config"])
    model = model_from_checkpoint(state, channels_last=True)
    device = resolve_device(cfg.device)
    model.to(device)
    cache = PreprocessCache(Path(cfg.cache_dir) if cfg.cache_dir else None)
    metrics: dict[str, Any] = dict(state.get("metrics", {}))
    for name, root in test_roots.items():
        records, refused = usable_records(load_records(cfg, root), cfg.resolution, cache)
        loader = DataLoader(
            CXRDataset(records, cfg.resolution, cache=cache),
            batch_size=cfg.effective_batch_size,
            num_workers=cfg.num_workers,
        )
        preds = predict(model, loader, device)
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
        }
        logger.info("test", extra={"set": name, **metrics[name]})
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
    """Export ``checkpoint`` into ``models_dir`` and add it to the manifest; return the entry.

    ``tensorrt``: ``auto`` (build a plan when TensorRT and a GPU are present), ``on``
    (fail without them) or ``off``. ``int8_calibration``: > 0 builds an INT8 plan
    calibrated on that many validation-style inputs (phantoms/training data).
    """
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["train_config"])
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
    if tensorrt == "on" or (tensorrt == "auto" and tensorrt_available()):
        calibration = _calibration_inputs(cfg, int8_calibration) if int8_calibration else None
        files["plan"] = build_tensorrt_plan(
            files["onnx"], models_dir / f"{stem}.plan", resolution=resolution,
            int8_calibration=calibration,
        )  # fmt: skip
    metrics = {"validation": {**state.get("val", {}), "data": "patient-level hold-out of "
                              f"{cfg.data_root} ({cfg.holdout_fraction:.0%})"},
               **state.get("metrics", {})}  # fmt: skip
    metrics = json_safe(metrics)  # a NaN AUROC (one class only) is null in strict JSON
    use = intended_use or (SYNTHETIC_USE if cfg.dataset == "phantoms" else RESEARCH_USE)
    entry = manifest_entry(
        name=name,
        version=version,
        resolution=resolution,
        architecture=config["architecture"],
        downsample=config["downsample"],
        files=files,
        models_dir=models_dir,
        threshold=float(state["threshold"]),
        threshold_rule=THRESHOLD_RULE,
        metrics=metrics,
        training={
            "data": cfg.data_root,
            "dataset": cfg.dataset,
            "protocol": protocol_summary(cfg),
            "seed": cfg.seed,
            "best_epoch": int(state["epoch"]),
            "config": cfg.to_dict(),
        },
        intended_use=use,
        labels=list(config["labels"]),
    )
    update_manifest(models_dir, entry)
    return entry


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
