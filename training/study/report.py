"""``reports/<name>/``: ``results.json``, the figures and ``report.md``.

``report.md`` is generated from ``results.json`` (tables in the published papers' format,
pairwise p-value tables, the checks against the published findings); a hand-written
``discussion.md`` in the same folder, if present, is included verbatim at the end, so a
regenerated report keeps its interpretation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.publish import json_safe
from training.study import figures
from training.study.analysis import SIZE_BANDS, analyse, load_cases
from training.study.config import StudyConfig


def command_line(cfg: StudyConfig) -> str:
    """The ``sharpcxr study`` command that reproduces ``cfg`` (non-default flags only)."""
    default = StudyConfig()
    parts = ["sharpcxr study"]
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if value == base:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(map(str, value))}")
        elif isinstance(value, dict):
            parts.extend(f"--external {k}={v}" for k, v in value.items())
        elif value is None:
            continue
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _environment(cfg: StudyConfig) -> dict[str, Any]:
    import torch

    device = "cpu"
    if cfg.device != "cpu" and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "device": device}  # fmt: skip


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")  # fmt: skip


def _ci(d: dict[str, Any] | None, digits: int = 3, key: str = "auc") -> str:
    if not d:
        return "—"
    value = d.get(key, d.get("value"))
    return f"{_f(value, digits)} [{_f(d['low'], digits)}, {_f(d['high'], digits)}]"


def _p(p: float) -> str:
    """``p=0.123``, ``p<0.001`` or ``p n/a``."""
    return "p n/a" if math.isnan(p) else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def _discrimination_table(runs: dict[str, Any], gaps: dict[str, Any]) -> list[str]:
    sets = list(next(iter(runs.values())))
    externals = [s for s in sets if s != "test"]
    head = ["Resolution", "AUROC hold-out (95% CI)"]
    head += [f"AUROC {s} (95% CI)" for s in externals]
    head += [f"gap hold-out − {s} (95% CI)" for s in externals]
    head += ["folds hold-out (mean ± SD)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=int):
        row = [f"{r} px", _ci(runs[r]["test"]["auroc"])]
        row += [_ci(runs[r][s]["auroc"]) for s in externals]
        for s in externals:
            g = gaps.get(r, {}).get(s)
            row.append(_ci(g, key="difference") if g else "—")
        t = runs[r]["test"]
        row.append(f"{_f(t['fold_auroc_mean'])} ± {_f(t['fold_auroc_sd'])}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _size_table(runs: dict[str, Any]) -> list[str]:
    head = ["Resolution"] + [f"{b} (n+)" for b in SIZE_BANDS] + [
        f"box accuracy {b}" for b in SIZE_BANDS]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=int):
        bands = runs[r]["test"]["by_size"]
        row = [f"{r} px"]
        row += [f"{_ci(bands[b]['auroc'])} ({bands[b]['positives']})" if b in bands else "—"
                for b in SIZE_BANDS]  # fmt: skip
        row += [_f(bands[b]["box_accuracy"], 2) if b in bands else "—" for b in SIZE_BANDS]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _localisation_table(runs: dict[str, Any]) -> list[str]:
    head = ["Resolution", "set", "positives", "mIoU", "%-IN", "box precision @0.1",
            "box accuracy @0.1", "boxes / image"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(runs, key=int):
        for s, summary in runs[r].items():
            loc = summary["localisation"]
            lines.append("| " + " | ".join([
                f"{r} px", s, str(loc["positives"]), _ci(loc["miou"]), _ci(loc["percent_in"], 1),
                _ci(loc["box_precision"], 2), _ci(loc["box_accuracy"], 2),
                _f(loc["boxes_per_image"], 2)]) + " |")  # fmt: skip
    return lines


def _p_matrix(rows: list[dict[str, Any]], diff_key: str, title: str) -> list[str]:
    """Upper triangle: the difference (column minus row) and its Holm-adjusted p."""
    keys = list(dict.fromkeys([r["a"] for r in rows] + [r["b"] for r in rows]))
    cell = {(r["a"], r["b"]): r for r in rows}
    lines = [
        f"*{title}, column minus row, Holm-adjusted p*",
        "",
        "| | " + " | ".join(keys[1:]) + " |",
        "|---|" + "---|" * (len(keys) - 1),
    ]
    for a in keys[:-1]:
        row = [a]
        for b in keys[1:]:
            c = cell.get((a, b))
            if c is None:
                row.append("")
            elif math.isfinite(c[diff_key]):
                row.append(f"{c[diff_key]:+.3f}, {_p(c['p_holm'])}")
            else:
                row.append("n/a")  # too few cases of a class, or nothing to localise
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _published_checks(
    runs: dict[str, Any], gaps: dict[str, Any], tests: dict[str, Any], change: dict[str, Any]
) -> list[str]:
    """Plain statements: does this run show what the papers report (lowest vs highest R)?"""
    res = sorted(runs, key=int)
    lo, hi = res[0], res[-1]
    if lo == hi:
        return ["- One resolution only: nothing to compare."]
    lines = []
    for set_name, table in tests.items():
        row = next((r for r in table["auroc"] if r["a"] == lo and r["b"] == hi), None)
        if row:
            if row["p_holm"] < 0.05:
                verdict = f"{'rises' if row['difference'] > 0 else 'falls'} from {lo} to {hi} px"
            else:
                verdict = f"shows no significant difference between {lo} and {hi} px"
            lines.append(
                f"- AUROC on **{set_name}** {verdict}: {row['difference']:+.3f} "
                f"(paired DeLong, Holm {_p(row['p_holm'])})."
            )
        iou = next((r for r in table["iou"] if r["a"] == lo and r["b"] == hi), None)
        if iou:
            loc_lo, loc_hi = runs[lo][set_name]["localisation"], runs[hi][set_name]["localisation"]
            lines.append(
                f"- Localisation on **{set_name}**, {lo} → {hi} px: mIoU "
                f"{_f(loc_lo['miou']['value'])} → {_f(loc_hi['miou']['value'])}, %-IN "
                f"{_f(loc_lo['percent_in']['value'], 1)} → {_f(loc_hi['percent_in']['value'], 1)}; "
                f"per-case IoU mean difference {iou['mean_difference']:+.3f} (Wilcoxon, "
                f"Holm {_p(iou['p_holm'])})."
            )
    for ext, c in change.items():
        g_lo, g_hi = gaps[lo][ext]["difference"], gaps[hi][ext]["difference"]
        if c["p"] < 0.05:
            verdict = "shrinks" if abs(g_hi) < abs(g_lo) else "grows"
        else:
            verdict = "shows no significant change"
        lines.append(
            f"- The hold-out − {ext} AUROC gap {verdict} from {lo} to {hi} px: {g_lo:+.3f} → "
            f"{g_hi:+.3f}, change {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] "
            f"({_p(c['p'])}; the papers report a shrinking gap)."
        )
    return lines


def _downsample_section(tests: dict[str, Any]) -> list[str]:
    lines = ["| downsampling | resolution | set | ΔAUROC vs standard (p) | mean ΔIoU (p) | "
             "mean Δ%-IN (p) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for downsample, by_res in tests.items():
        for r in sorted(by_res, key=int):
            for s, t in by_res[r].items():
                a, i, p = t["auroc"][0], t["iou"][0], t["percent_in"][0]
                lines.append(
                    f"| {downsample} | {r} px | {s} | {a['difference']:+.3f} "
                    f"({_p(a['p'])}) | {i['mean_difference']:+.3f} ({_p(i['p'])}) | "
                    f"{p['mean_difference']:+.1f} ({_p(p['p'])}) |"
                )
    return lines


def _shift_table(by_res: dict[str, Any]) -> list[str]:
    resolutions = sorted(by_res, key=int)
    head = ["factor", *(f"{r} px" for r in resolutions)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for factor in by_res[resolutions[0]]:
        row = [factor]
        for r in resolutions:
            e = by_res[r][factor]
            text = _f(e["auroc"]["auc"])
            if "difference" in e:
                text += f" ({e['difference']:+.3f}, {_p(e['p'])})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_report(cfg: StudyConfig) -> Path:
    """Analyse what the runner finished and write ``results.json``, figures, ``report.md``."""
    results = analyse(cfg)
    if not results["runs"]:
        raise ValueError(f"no finished resolution under {cfg.run_dir}: run the study first")
    out = cfg.report_dir
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for downsample in results["runs"]:
        for r in results["runs"][downsample]:
            path = cfg.run_dir / downsample / r / "resolution.json"
            summaries.setdefault(downsample, {})[r] = json.loads(path.read_text())
    doc = {"study": cfg.to_dict(), "command": command_line(cfg),
           "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "environment": _environment(cfg), "training": summaries, **results}  # fmt: skip
    (out / "results.json").write_text(json.dumps(json_safe(doc), indent=1) + "\n")
    made = [
        figures.auroc_figure(results, out),
        figures.gap_figure(results, out),
        figures.localisation_figure(results, out),
        figures.size_figure(results, out),
    ]
    grid_ds = "standard" if "standard" in results["runs"] else next(iter(results["runs"]))
    cases = {int(r): load_cases(cfg.run_dir / grid_ds / r / "cases.npz")["test"]
             for r in results["runs"][grid_ds]}  # fmt: skip
    made.append(figures.saliency_grid(cases, out, cfg.grid_cases, cfg.saliency_threshold))
    (out / "report.md").write_text(_markdown(cfg, doc, [p for p in made if p]))
    return out


def _markdown(cfg: StudyConfig, doc: dict[str, Any], made: list[Path]) -> str:
    env, seconds = doc["environment"], 0.0
    for by_res in doc["training"].values():
        seconds += sum(s.get("seconds", 0.0) for s in by_res.values())
    first = next(iter(next(iter(doc["training"].values())).values()))
    hp = first["hyper_parameters"]
    lines = [
        f"# Resolution study: {cfg.name}", "",
        f"Generated {doc['generated']} by `{doc['command']}`.", "",
        f"Machine: {env['platform']}, {env['cpu_count']} CPUs, device {env['device']}, "
        f"torch {env['torch']}. Training and evaluation time: {seconds / 60:.1f} min (each "
        "resolution's last session).", "",
        "## Design", "",
        f"- **Model:** architecture `{cfg.architecture}`, downsampling "
        f"{', '.join(cfg.downsamples)}; "
        f"{cfg.folds}-fold patient-level cross-validation; each resolution's model is the "
        "ensemble of its folds (mean logit; mean of the folds' normalised Grad-CAMs).",
        f"- **Training, the same schedule at every resolution:** {cfg.epochs} epochs, batch "
        f"{cfg.batch_size or 'as the protocol'}, AdamW, LR ÷10 after 2 epochs without "
        "validation-loss improvement, best epoch by validation AUROC; "
        + (f"lr, weight decay and augmentation searched per resolution ({cfg.hpo_trials} "
           "Optuna trials on fold 0; values in results.json, training.*.hyper_parameters)"
           if cfg.hpo_trials else
           f"lr {hp['lr']:g}, weight decay {hp['weight_decay']:g}, augmentation strength "
           f"{hp['augment_strength']:g}")
        + (f", tone-curve augmentation (gamma) {cfg.augment_gamma:g}." if cfg.augment_gamma
           else "."),
        "- **Test sets:** " + "; ".join(f"`{k}`: {v['n']} images ({v['refused']} refused), "
                                         f"`{Path(v['root']).name}`"
                                         for k, v in first["sets"].items()) + ".",
        f"- **Statistics:** DeLong 95% CIs and paired DeLong tests (Sun & Xu); localisation "
        f"over positives with the service's saliency (threshold {cfg.saliency_threshold}), "
        f"bootstrap 95% CIs ({cfg.bootstrap_resamples} resamples), Wilcoxon signed-rank "
        f"between resolutions; Holm-adjusted p within each table. Boxes: connected "
        f"components; a true positive is IoU ≥ {cfg.box_iou_threshold} with a not yet "
        "matched ground-truth box; precision = TP / predicted boxes, accuracy = TP / "
        "ground-truth boxes.", "",
        "## Checks against the published findings", "",
    ]  # fmt: skip
    for downsample, runs in doc["runs"].items():
        lines.append(f"**{downsample}:**")
        checks = _published_checks(
            runs, doc["gaps"].get(downsample, {}), doc["resolution_tests"][downsample],
            doc.get("gap_change", {}).get(downsample, {}),
        )  # fmt: skip
        lines += [*checks, ""]
    for downsample, runs in doc["runs"].items():
        lines += [f"## {downsample}: discrimination", ""]
        lines += [*_discrimination_table(runs, doc["gaps"].get(downsample, {})), ""]
        lines += [
            "AUROC by finding size (hold-out; positives of one size band vs all "
            "negatives) and box accuracy per band:",
            "",
        ]
        lines += [*_size_table(runs), ""]
        lines += [f"## {downsample}: localisation", "", *_localisation_table(runs), ""]
        lines += [f"## {downsample}: pairwise tests between resolutions", ""]
        for set_name, t in doc["resolution_tests"][downsample].items():
            lines += _p_matrix(t["auroc"], "difference", f"{set_name}: ΔAUROC (paired DeLong)")
            lines += _p_matrix(t["iou"], "mean_difference", f"{set_name}: mean ΔIoU (Wilcoxon)")
            lines += _p_matrix(t["percent_in"], "mean_difference",
                               f"{set_name}: mean Δ%-IN (Wilcoxon)")  # fmt: skip
    for downsample, by_res in doc.get("shift", {}).items():
        lines += [f"## {downsample}: which site-b factor costs what (shift ablation)", "",
                  "Site-a phantoms with one site-b acquisition factor each (same anatomy and "
                  "findings in every row); AUROC of the fold ensemble, and its difference from "
                  "the unshifted row (paired DeLong, unadjusted p).", ""]  # fmt: skip
        lines += [*_shift_table(by_res), ""]
    if doc["downsample_tests"]:
        lines += ["## Anti-aliasing against standard (same cases, unadjusted p)", ""]
        lines += [*_downsample_section(doc["downsample_tests"]), ""]
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in made] + [""]
    discussion = cfg.report_dir / "discussion.md"
    if discussion.exists():
        lines += [discussion.read_text().rstrip(), ""]
    return "\n".join(lines)
