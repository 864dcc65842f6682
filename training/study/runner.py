"""``sharpcxr study``: train and evaluate every (downsampling, resolution, fold), resumably.

On disk, under ``runs_dir/<name>/<downsample>/<R>/``::

    fold-<k>/best.pt, last.pt     the fold's checkpoints (training resumes from last.pt)
    fold-<k>/inference.npz        the fold's logits and raw CAMs on every test set
    hpo/                          the Optuna study of this resolution (with --hpo-trials)
    cases.npz + resolution.json   the finished resolution: the fold ensemble's per-case
                                  logits, normalised CAMs and localisation scores
    shift.npz                     the ensemble on the shift-ablation variants (phantoms)

A resolution with ``resolution.json`` is finished and is never retrained; a fold with
``inference.npz`` likewise. Interrupt the study at any point and run the same command again.
Then :mod:`training.study.analysis` computes the statistics from the ``cases.npz`` files and
:mod:`training.study.report` writes ``reports/<name>/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cxrmodel.checkpoint import load_checkpoint, model_from_checkpoint
from training.datasets import PreprocessCache
from training.loop import resolve_device, train
from training.study.config import StudyConfig
from training.study.data import load_study_data, train_config
from training.study.evaluate import Inference, ensemble, infer, localise

logger = logging.getLogger(__name__)

CASES_FORMAT_VERSION = 1


def resolution_dir(cfg: StudyConfig, downsample: str, resolution: int) -> Path:
    return cfg.run_dir / downsample / str(resolution)


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``path`` atomically (a temporary file, then a rename): its existence marks a
    finished step, so a crash must never leave a partial one behind."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def _save_inference(path: Path, sets: dict[str, Inference], ids: dict[str, list[str]]) -> None:
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, inf in sets.items():
        arrays[f"{name}.logits"], arrays[f"{name}.labels"] = inf.logits, inf.labels
        arrays[f"{name}.cams"], arrays[f"{name}.image_ids"] = inf.cams, np.array(ids[name])
    save_npz(path, arrays)


def _load_inference(path: Path, ids: dict[str, list[str]]) -> dict[str, Inference]:
    """A fold's saved inference, checked to be on exactly the cases of ``ids`` (set -> ids)."""
    out = {}
    with np.load(path) as z:
        for name, expected in ids.items():
            key = f"{name}.image_ids"
            if key not in z.files or z[key].tolist() != expected:
                raise ValueError(
                    f"{path} was computed on other cases of {name!r} than the data now gives "
                    "(a set was added, or images are refused differently): delete it to redo it"
                )
            out[name] = Inference(z[f"{name}.logits"], z[f"{name}.labels"], z[f"{name}.cams"])
    return out


def _hyper_parameters(cfg: StudyConfig, base: Any, out: Path) -> dict[str, Any]:
    """Optuna on fold 0 of this resolution (resumable: SQLite in ``out``); {} without HPO."""
    if cfg.hpo_trials <= 0:
        return {}
    import optuna

    from training.hpo import run_search

    out.mkdir(parents=True, exist_ok=True)
    search_base = dataclasses.replace(base, fold=0, out_dir=str(out))
    storage = f"sqlite:///{(out / 'optuna.db').resolve()}"
    study = optuna.create_study(study_name="study", storage=storage, load_if_exists=True,
                                direction="maximize")  # fmt: skip
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)  # failed/killed trials are redone
    if done < cfg.hpo_trials:
        # A new sampler seed on resume, or TPE's first draws would repeat the earlier ones.
        study = run_search(search_base, cfg.hpo_trials - done, storage=storage,
                           study_name="study", seed=cfg.seed + done)  # fmt: skip
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        logger.warning("no HPO trial completed; training with the configured parameters")
        return {}
    return dict(max(complete, key=lambda t: float(t.value or 0.0)).params)


def run_resolution(cfg: StudyConfig, downsample: str, resolution: int) -> dict[str, Any]:
    """Train the folds of one (downsampling, resolution), evaluate, and save the cases."""
    out = resolution_dir(cfg, downsample, resolution)
    done = out / "resolution.json"
    if done.exists():
        logger.info("finished before", extra={"downsample": downsample, "resolution": resolution})
        summary: dict[str, Any] = json.loads(done.read_text())
        return summary
    started = time.monotonic()
    data = load_study_data(cfg, resolution)
    sets = {"test": data.test, **data.external}
    base = dataclasses.replace(train_config(cfg, data.development_root, resolution),
                               downsample=downsample)  # fmt: skip
    params = _hyper_parameters(cfg, base, out / "hpo")
    base = dataclasses.replace(base, **params)
    device = resolve_device(cfg.device)
    cache = PreprocessCache(Path(base.cache_dir) if base.cache_dir else None)
    folds: list[dict[str, Any]] = []
    per_fold: list[dict[str, Inference]] = []
    ids = {name: [r.image_id for r in records] for name, records in sets.items()}
    for fold in range(cfg.folds):
        fold_dir = out / f"fold-{fold}"
        inference_path = fold_dir / "inference.npz"
        t0 = time.monotonic()
        if not inference_path.exists():  # the fold's last file: its existence marks it done
            result = train(dataclasses.replace(base, fold=fold, out_dir=str(fold_dir)))
            state = load_checkpoint(result.best_checkpoint)
            model = model_from_checkpoint(state, channels_last=True).to(device)
            _write_json(fold_dir / "fold.json", {
                "fold": fold, "best_val_auroc": result.best_val_auroc,
                "best_epoch": result.best_epoch, "epochs_run_this_session": result.epochs_run,
                "stopped_because": result.stopped_because,
                "seconds_this_session": round(time.monotonic() - t0, 1),
            })  # fmt: skip
            _save_inference(inference_path, {
                name: infer(model, records, resolution, cache, device, base.effective_batch_size)
                for name, records in sets.items()
            }, ids)  # fmt: skip
        folds.append(json.loads((fold_dir / "fold.json").read_text()))
        per_fold.append(_load_inference(inference_path, ids))
        logger.info("fold done", extra={"downsample": downsample, "resolution": resolution,
                                        **folds[-1]})  # fmt: skip
    arrays: dict[str, Any] = {"format_version": np.array(CASES_FORMAT_VERSION)}
    for name, records in sets.items():
        combined = ensemble([f[name] for f in per_fold])
        loc = localise(records, combined.cams, resolution, cache, cfg.saliency_threshold,
                       cfg.box_iou_threshold)  # fmt: skip
        arrays.update({
            f"{name}.image_ids": np.array([r.image_id for r in records]),
            f"{name}.paths": np.array([str(r.path) for r in records]),
            f"{name}.rle": np.array(["|".join(r.mask_rle) for r in records]),
            f"{name}.labels": combined.labels,
            f"{name}.logits": combined.logits,
            f"{name}.fold_logits": np.stack([f[name].logits for f in per_fold]),
            f"{name}.cams": combined.cams.astype(np.float16),
            f"{name}.sizes": np.array([data.size_of.get(r.image_id, np.nan) for r in records]),
            **{f"{name}.loc.{k}": v for k, v in dataclasses.asdict(loc).items()},
        })  # fmt: skip
    save_npz(out / "cases.npz", arrays)
    summary = {
        "downsample": downsample, "resolution": resolution, "folds": folds,
        "hyper_parameters": {"lr": base.lr, "weight_decay": base.weight_decay,
                             "augment_strength": base.augment_strength,
                             "augment_gamma": base.augment_gamma, "searched": bool(params)},
        "sets": {name: {"n": len(records), "refused": data.refused.get(name, 0),
                        "root": str(data.external_roots.get(name, data.development_root))}
                 for name, records in sets.items()},
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    _write_json(done, summary)  # last: its existence marks the resolution finished
    return summary


def check_same_runs(cfg: StudyConfig) -> None:
    """Refuse to mix runs: every field that shapes training or evaluation data must equal
    the one the finished runs under ``run_dir`` were made with (``study.json``).

    Free to change between invocations: the axes (more resolutions or downsamplings), the
    report's settings, the device and the worker count.
    """
    path = cfg.run_dir / "study.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    current = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
    changed = sorted(k for k in current if k not in FREE_FIELDS and k in stored
                     and stored[k] != current[k])  # fmt: skip
    if changed:
        detail = ", ".join(f"{k}: {stored[k]!r} -> {current[k]!r}" for k in changed)
        raise ValueError(
            f"{cfg.run_dir} holds runs made with other settings ({detail}); use another "
            "--name, or delete that folder to start over"
        )


#: StudyConfig fields that may differ from the finished runs' (see check_same_runs)
FREE_FIELDS = frozenset({
    # Not the saliency or box thresholds: localisation is scored when a resolution finishes.
    "name", "reports_dir", "runs_dir", "resolutions", "downsamples", "device", "num_workers",
    "bootstrap_resamples", "grid_cases", "shift_ablation",
})  # fmt: skip


def run_study(cfg: StudyConfig) -> Path:
    """Every (downsampling, resolution), then the analysis and the report; returns its dir."""
    from training.study.report import write_report

    cfg.validate()
    check_same_runs(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(cfg.run_dir / "study.json", cfg.to_dict())
    for downsample in cfg.downsamples:
        for resolution in cfg.resolutions:
            summary = run_resolution(cfg, downsample, resolution)
            logger.warning("resolution done", extra={
                "downsample": downsample, "resolution": resolution,
                "seconds": summary.get("seconds")})  # fmt: skip
    if cfg.shift_ablation and cfg.dataset == "phantoms" and cfg.data_root is None:
        from training.study.shift import run_shift

        for downsample in cfg.downsamples:
            for resolution in cfg.resolutions:
                run_shift(cfg, downsample, resolution, resolution_dir(cfg, downsample, resolution))
    return write_report(cfg)
