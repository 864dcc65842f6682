"""The study's figures (matplotlib, Agg): PNG files written into the report folder.

* ``auroc_vs_resolution.png``: ensemble AUROC with DeLong 95% CIs, hold-out (in
  distribution, solid) and external sets (dashed), one colour per downsampling.
* ``gap_heatmap.png``: hold-out minus external AUROC, downsampling x resolution.
* ``localisation_vs_resolution.png``: mIoU and %-IN with bootstrap 95% CIs.
* ``auroc_by_size.png``: AUROC of small / medium / large findings against all negatives.
* ``saliency_grid.png``: the same hold-out positives (small to large) across resolutions,
  the ground truth outlined, the thresholded saliency mask filled (like Wollek et al.'s
  Figure 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np

from imaging.geometry import LetterboxGeometry
from imaging.saliency import cam_to_original, normalise_cam, saliency_to_mask
from training.datasets.records import Record, read_display_pixels
from training.study.analysis import SIZE_BANDS, Cases
from training.study.evaluate import truth_mask

STYLES = {"standard": "tab:blue", "blurpool": "tab:orange", "flc": "tab:green", "asap": "tab:red"}
SET_LABELS = {"test": "hold-out (site a)", "site_b": "external (site b)"}


def _resolutions(runs: dict[str, Any]) -> list[int]:
    return sorted(int(r) for r in runs)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _errorbar(ax: Any, xs: Sequence[float], cis: list[dict[str, Any] | None], **kw: Any) -> None:
    pts = [(x, c) for x, c in zip(xs, cis, strict=True) if c]
    if not pts:
        return
    x = [p[0] for p in pts]
    y = np.array([p[1]["value" if "value" in p[1] else "auc"] for p in pts])
    lo = np.array([p[1]["low"] for p in pts])
    hi = np.array([p[1]["high"] for p in pts])
    ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=3, marker="o", **kw)


def _all_resolutions(results: dict[str, Any]) -> list[int]:
    """Every resolution of any downsampling (they need not all have the same ones)."""
    return sorted({int(r) for runs in results["runs"].values() for r in runs})


def _dodge(xs: list[int], k: int, count: int) -> list[float]:
    """Shift series ``k`` of ``count`` a little along the log axis so error bars stay apart."""
    return [x * 2 ** ((k - (count - 1) / 2) * 0.06) for x in xs]


def _log2_axis(ax: Any, resolutions: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(resolutions, [str(r) for r in resolutions])
    ax.set_xlabel("training resolution (px)")
    ax.grid(alpha=0.3)


def auroc_figure(results: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    count = len(results["runs"])
    for k, (downsample, runs) in enumerate(results["runs"].items()):
        res = _resolutions(runs)
        for set_name in runs[str(res[0])]:
            cis = [runs[str(r)][set_name]["auroc"] for r in res]
            _errorbar(ax, _dodge(res, k, count), cis, color=STYLES.get(downsample),
                      linestyle="-" if set_name == "test" else "--",
                      label=f"{downsample}, {SET_LABELS.get(set_name, set_name)}")  # fmt: skip
    _log2_axis(ax, _all_resolutions(results))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("AUROC (k-fold ensemble, DeLong 95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, out / "auroc_vs_resolution.png")


def gap_figure(results: dict[str, Any], out: Path, external: str = "site_b") -> Path | None:
    gaps = results["gaps"]
    rows = [d for d in gaps if any(external in g for g in gaps[d].values())]
    if not rows:
        return None
    cols = sorted({int(r) for d in rows for r in gaps[d]})
    values = np.full((len(rows), len(cols)), np.nan)
    for i, d in enumerate(rows):
        for j, r in enumerate(cols):
            if external in gaps[d].get(str(r), {}):
                values[i, j] = gaps[d][str(r)][external]["difference"]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2, 0.6 * len(rows) + 1.6))
    limit = max(0.3, float(np.nanmax(np.abs(values))))  # diverging: a negative gap shows too
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:+.3f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("training resolution (px)")
    ax.set_title(f"AUROC gap: hold-out minus {SET_LABELS.get(external, external)}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, out / "gap_heatmap.png")


def localisation_figure(results: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, metric, label in ((axes[0], "miou", "mIoU"), (axes[1], "percent_in", "%-IN")):
        count = len(results["runs"])
        for k, (downsample, runs) in enumerate(results["runs"].items()):
            res = _resolutions(runs)
            for set_name in runs[str(res[0])]:
                cis = [runs[str(r)][set_name]["localisation"][metric] for r in res]
                _errorbar(ax, _dodge(res, k, count), cis, color=STYLES.get(downsample),
                          linestyle="-" if set_name == "test" else "--",
                          label=f"{downsample}, {SET_LABELS.get(set_name, set_name)}")  # fmt: skip
        _log2_axis(ax, _all_resolutions(results))
        ax.set_ylabel(f"{label} over positives (bootstrap 95% CI)")
    axes[0].legend(fontsize=7)
    return _save(fig, out / "localisation_vs_resolution.png")


def size_figure(results: dict[str, Any], out: Path, downsample: str = "standard") -> Path | None:
    runs = results["runs"].get(downsample) or next(iter(results["runs"].values()))
    res = _resolutions(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, band in enumerate(SIZE_BANDS):
        cis = [runs[str(r)]["test"]["by_size"].get(band, {}).get("auroc") for r in res]
        if any(cis):
            _errorbar(ax, res, cis, color=plt.cm.viridis(k / 2), label=f"{band} findings")
    _log2_axis(ax, res)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("hold-out AUROC vs all negatives (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, out / "auroc_by_size.png")


def saliency_grid(
    cases_by_resolution: dict[int, Cases],
    out: Path,
    n_cases: int = 4,
    threshold: float = 0.5,
    display_size: int = 256,
) -> Path | None:
    """Rows: ``n_cases`` hold-out positives spread from the smallest to the largest finding
    (the same cases at every resolution); columns: ground truth, then each resolution."""
    resolutions = sorted(cases_by_resolution)
    first = cases_by_resolution[resolutions[0]]
    positives = np.flatnonzero(first["labels"] > 0.5)
    if positives.size == 0 or n_cases <= 0:
        return None
    sizes = first["sizes"][positives]
    order = positives[np.argsort(np.nan_to_num(sizes, nan=0.5), kind="stable")]
    picks = order[np.unique(np.linspace(0, order.size - 1, min(n_cases, order.size)).astype(int))]
    fig, axes = plt.subplots(len(picks), len(resolutions) + 1, squeeze=False,
                             figsize=(2.1 * (len(resolutions) + 1), 2.1 * len(picks)))  # fmt: skip
    for row, case in enumerate(picks):
        path = Path(str(first["paths"][case]))
        pixels = read_display_pixels(path)
        rle = tuple(filter(None, str(first["rle"][case]).split("|")))
        truth = truth_mask(Record(str(first["image_ids"][case]), path, np.ones(1, np.float32),
                                  None, mask_rle=rle), *pixels.shape)  # fmt: skip
        step = max(1, pixels.shape[0] // display_size)
        shown = pixels[::step, ::step]
        size = first["sizes"][case]
        panels = [("ground truth", None)] + [(f"{r} px", r) for r in resolutions]
        for col, (title, r) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
            ax.contour(truth[::step, ::step], levels=[0.5], colors="lime", linewidths=0.8)
            if r is not None:
                cam = cases_by_resolution[r]["cams"][case].astype(np.float32)
                geometry = LetterboxGeometry.fit(pixels.shape[0], pixels.shape[1], r)
                saliency = cam_to_original(normalise_cam(cam), geometry)  # as localise
                mask = saliency_to_mask(saliency, threshold)[::step, ::step]
                ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.45)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(f"size {size:.2f}" if np.isfinite(size) else "", fontsize=8)
    return _save(fig, out / "saliency_grid.png")
