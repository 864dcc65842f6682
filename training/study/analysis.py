"""The study's statistics, from the per-case files the runner saved (no model is run here).

For every (downsampling, resolution, test set), the k-fold ensemble's:

* AUROC with its DeLong 95% CI, the folds' own AUROCs, and AUROC by finding size (positives
  of one size band against every negative: the mechanism, small findings need pixels);
* localisation over positives: mIoU, %-IN, box precision and accuracy at IoU >= 0.1, each
  with a percentile-bootstrap 95% CI (cases resampled);
* the in/out-of-distribution gap (hold-out AUROC minus external AUROC; independent sets, so
  DeLong variances add);

and between resolutions (same cases): paired DeLong for AUROC and Wilcoxon signed-rank for
per-case IoU and %-IN, with Holm-adjusted p-values per table; between downsamplings at each
resolution: the same tests against ``standard``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.statistics import (
    AurocCI,
    auroc_ci,
    bootstrap_ci,
    difference_of_differences,
    holm,
    paired_delong,
    unpaired_difference_ci,
    wilcoxon_signed_rank,
)
from training.study.config import StudyConfig

#: finding-size bands of the phantoms' ``size_fraction`` (0 tiny apical .. 1 large)
SIZE_BANDS = {"small": (0.0, 1 / 3), "medium": (1 / 3, 2 / 3), "large": (2 / 3, 1.0 + 1e-9)}

Cases = dict[str, npt.NDArray[Any]]


def load_cases(path: Path) -> dict[str, Cases]:
    """``cases.npz`` -> ``{set name: {field: array}}`` (fields as the runner wrote them)."""
    out: dict[str, Cases] = {}
    with np.load(path) as z:
        for key in z.files:
            if "." not in key:
                continue
            name, field = key.split(".", 1)
            out.setdefault(name, {})[field] = z[key]
    return out


def _ratio(numerator: npt.NDArray[Any], denominator: npt.NDArray[Any]) -> float:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total > 0 else math.nan


def _interval(estimate: tuple[float, float, float]) -> dict[str, float]:
    return {"value": estimate[0], "low": estimate[1], "high": estimate[2]}


def _safe_auroc(labels: npt.NDArray[Any], logits: npt.NDArray[Any]) -> dict[str, Any] | None:
    """AUROC CI, or None when a class has fewer than two known cases."""
    known = ~np.isnan(labels)
    y = labels[known] > 0.5
    if y.sum() < 2 or (~y).sum() < 2:
        return None
    return auroc_ci(labels, logits).to_dict()


def summarise_set(cases: Cases, resamples: int, seed: int) -> dict[str, Any]:
    """Discrimination and localisation of one test set at one resolution."""
    labels, logits = cases["labels"], cases["logits"]
    fold_aurocs = [a["auc"] for a in (_safe_auroc(labels, f) for f in cases["fold_logits"]) if a]
    by_size: dict[str, Any] = {}
    sizes = cases["sizes"]
    negatives = labels <= 0.5
    loc_index = cases["loc.case_index"]
    for band, (lo, hi) in SIZE_BANDS.items():
        in_band = (labels > 0.5) & (sizes >= lo) & (sizes < hi)
        if not in_band.any():
            continue
        keep = in_band | negatives
        in_loc = in_band[loc_index]
        by_size[band] = {
            "positives": int(in_band.sum()),
            "auroc": _safe_auroc(labels[keep], logits[keep]),
            "miou": float(cases["loc.iou"][in_loc].mean()) if in_loc.any() else math.nan,
            "box_accuracy": _ratio(cases["loc.tp"][in_loc],
                                   cases["loc.tp"][in_loc] + cases["loc.fn"][in_loc]),
        }  # fmt: skip
    tp, fp, fn = cases["loc.tp"], cases["loc.fp"], cases["loc.fn"]
    boot = {"n_resamples": resamples, "seed": seed}
    localisation = {
        "positives": int(loc_index.size),
        "miou": _interval(bootstrap_ci(np.mean, [cases["loc.iou"]], **boot)),
        "percent_in": _interval(bootstrap_ci(np.mean, [cases["loc.percent_in"]], **boot)),
        "box_precision": _interval(bootstrap_ci(_ratio, [tp, tp + fp], **boot)),
        "box_accuracy": _interval(bootstrap_ci(_ratio, [tp, tp + fn], **boot)),
        "boxes_per_image": float((tp + fp).mean()) if tp.size else math.nan,
    }
    return {
        "n": int(labels.size),
        "positives": int((labels > 0.5).sum()),
        "auroc": _safe_auroc(labels, logits),
        "fold_aurocs": fold_aurocs,
        "fold_auroc_mean": float(np.mean(fold_aurocs)) if fold_aurocs else math.nan,
        "fold_auroc_sd": float(np.std(fold_aurocs, ddof=1)) if len(fold_aurocs) > 1 else math.nan,
        "by_size": by_size,
        "localisation": localisation,
    }


def _paired_tables(
    runs: dict[str, Cases], keys: list[str], label: str
) -> dict[str, list[dict[str, Any]]]:
    """Pairwise tests between the runs ``keys`` (same cases) with Holm-adjusted p-values."""
    tables: dict[str, list[dict[str, Any]]] = {"auroc": [], "iou": [], "percent_in": []}
    for a, b in itertools.combinations(keys, 2):
        ca, cb = runs[a], runs[b]
        if not np.array_equal(ca["image_ids"], cb["image_ids"]):
            raise ValueError(f"{label}: {a} and {b} were scored on different cases")
        row: dict[str, Any] = {"a": a, "b": b, "difference": math.nan, "z": math.nan,
                               "p": math.nan}  # fmt: skip
        if _safe_auroc(ca["labels"], ca["logits"]) is not None:  # two of each class
            test = paired_delong(ca["labels"], cb["logits"], ca["logits"])  # b - a
            row.update(difference=test.difference, z=test.statistic, p=test.p_value)
        tables["auroc"].append(row)
        for metric in ("iou", "percent_in"):
            w = wilcoxon_signed_rank(cb[f"loc.{metric}"], ca[f"loc.{metric}"])  # b - a
            tables[metric].append({"a": a, "b": b, "mean_difference": w.difference,
                                   "statistic": w.statistic, "p": w.p_value, "n": w.n})  # fmt: skip
    for rows in tables.values():
        for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
            row["p_holm"] = adjusted
    return tables


def _gap_change(by_res: dict[int, dict[str, Cases]]) -> dict[str, Any]:
    """How the in/out gap changes from the lowest to the highest resolution, per external set.

    ``gap(R) = AUROC_test(R) - AUROC_ext(R)``, so ``gap(hi) - gap(lo)`` equals the test set's
    paired AUROC change minus the external set's; the two sets share no case, so the paired
    DeLong variances add. Negative = the gap shrinks (the published finding).
    """
    if len(by_res) < 2:
        return {}
    lo, hi = min(by_res), max(by_res)
    test_lo, test_hi = by_res[lo]["test"], by_res[hi]["test"]
    if _safe_auroc(test_lo["labels"], test_lo["logits"]) is None:
        return {}
    inside = paired_delong(test_lo["labels"], test_hi["logits"], test_lo["logits"])
    out: dict[str, Any] = {}
    for name in (n for n in by_res[lo] if n != "test"):
        ext_lo, ext_hi = by_res[lo][name], by_res[hi][name]
        if _safe_auroc(ext_lo["labels"], ext_lo["logits"]) is None:
            continue
        outside = paired_delong(ext_lo["labels"], ext_hi["logits"], ext_lo["logits"])
        d, low, high, p = difference_of_differences(inside, outside)
        out[name] = {"from": lo, "to": hi, "difference": d, "low": low, "high": high, "p": p}
    return out


def analyse(cfg: StudyConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Statistics over every finished (downsampling, resolution) of the study."""
    root = run_dir or cfg.run_dir
    cases: dict[str, dict[int, dict[str, Cases]]] = {}
    for downsample in cfg.downsamples:
        for resolution in cfg.resolutions:
            path = root / downsample / str(resolution) / "cases.npz"
            if (path.parent / "resolution.json").exists():  # written last: finished
                cases.setdefault(downsample, {})[resolution] = load_cases(path)
    seed, resamples = cfg.seed, cfg.bootstrap_resamples
    results: dict[str, Any] = {"runs": {}, "gaps": {}, "resolution_tests": {},
                               "downsample_tests": {}}  # fmt: skip
    for downsample, by_res in cases.items():
        runs = results["runs"].setdefault(downsample, {})
        for resolution, sets in by_res.items():
            runs[str(resolution)] = {name: summarise_set(c, resamples, seed)
                                     for name, c in sets.items()}  # fmt: skip
            gaps = results["gaps"].setdefault(downsample, {}).setdefault(str(resolution), {})
            inside = _safe_auroc(sets["test"]["labels"], sets["test"]["logits"])
            for name, c in sets.items():
                outside = _safe_auroc(c["labels"], c["logits"])
                if name == "test" or inside is None or outside is None:
                    continue
                diff, low, high, p = unpaired_difference_ci(AurocCI(**inside), AurocCI(**outside))
                gaps[name] = {"difference": diff, "low": low, "high": high, "p": p}
        change = _gap_change(by_res)
        if change:
            results.setdefault("gap_change", {})[downsample] = change
        set_names = next(iter(by_res.values())).keys()
        results["resolution_tests"][downsample] = {
            name: _paired_tables({str(r): s[name] for r, s in by_res.items()},
                                 [str(r) for r in sorted(by_res)], f"{downsample}/{name}")
            for name in set_names
        }  # fmt: skip
    if "standard" in cases:
        for downsample in (d for d in cases if d != "standard"):
            tests = results["downsample_tests"].setdefault(downsample, {})
            for resolution in sorted(set(cases["standard"]) & set(cases[downsample])):
                pair = {"standard": cases["standard"][resolution],
                        downsample: cases[downsample][resolution]}  # fmt: skip
                tests[str(resolution)] = {
                    name: _paired_tables({k: v[name] for k, v in pair.items()},
                                         ["standard", downsample], f"{resolution}/{name}")
                    for name in pair["standard"]
                }  # fmt: skip
    from training.study.shift import analyse_shift

    for downsample, by_res in cases.items():
        for resolution in by_res:
            path = root / downsample / str(resolution) / "shift.npz"
            if path.exists():
                results.setdefault("shift", {}).setdefault(downsample, {})[str(resolution)] = (
                    analyse_shift(path)
                )
    return results
