"""Hyper-parameter search per resolution with Optuna.

Searched: learning rate (log 1e-5..1e-3), weight decay (log 1e-6..1e-2) and augmentation
strength (0..1); the objective is the best validation AUROC of a run, reported every epoch
so the median pruner can stop hopeless trials early. With ``storage`` (an RDB URL such as
``sqlite:///hpo.db`` or ``postgresql://...``) several workers or machines share one study:
start the same command on each, with the same ``study_name``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import optuna

from training.config import TrainConfig
from training.loop import train

logger = logging.getLogger(__name__)

SEARCH_SPACE = {
    "lr": (1e-5, 1e-3),
    "weight_decay": (1e-6, 1e-2),
    "augment_strength": (0.0, 1.0),
}


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The base config with this trial's hyper-parameters and its own output folder."""
    return dataclasses.replace(
        base,
        lr=trial.suggest_float("lr", *SEARCH_SPACE["lr"], log=True),
        weight_decay=trial.suggest_float("weight_decay", *SEARCH_SPACE["weight_decay"], log=True),
        augment_strength=trial.suggest_float("augment_strength", *SEARCH_SPACE["augment_strength"]),
        out_dir=str(Path(base.out_dir) / f"trial-{trial.number:04d}"),
        resume=True,
    )


def run_search(
    base: TrainConfig,
    n_trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
) -> optuna.Study:
    """Run ``n_trials`` (more when other workers share the study) and return the study."""
    name = study_name or f"sharpcxr-{base.dataset}-{base.architecture}-{base.resolution}px"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )

    def objective(trial: optuna.Trial) -> float:
        result = train(suggest(trial, base), trial=trial)
        if result.stopped_because == "pruned":
            raise optuna.TrialPruned()
        return 0.0 if math.isnan(result.best_val_auroc) else result.best_val_auroc

    study.optimize(objective, n_trials=n_trials)
    return study


def best_summary(study: optuna.Study) -> dict[str, Any]:
    """The best trial's number, value and parameters (JSON-ready)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return {"study": study.study_name, "trials": len(study.trials), "best": None}
    best = study.best_trial
    return {
        "study": study.study_name,
        "trials": len(study.trials),
        "best": {"number": best.number, "val_auroc": best.value, "params": best.params},
    }
