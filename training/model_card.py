"""The model card of what ``models/manifest.json`` holds, as markdown tables.

uv run python -m training.model_card models/manifest.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str = ".3f") -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, spec)
    return "n/a" if value is None else str(value)


def _rate(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def model_card(manifest: dict[str, Any]) -> str:
    """Markdown: one row per model with its data, threshold and test metrics, then its
    calibration (ECE and cross-entropy before/after) and OOD rates per data set."""
    models = sorted(manifest["models"], key=lambda m: (m["name"], m["resolution"]))
    lines = [
        "| model | R | architecture | downsample | threshold | val AUROC | "
        "test site a AUROC (n) | test site b AUROC (n) | trained on | init from |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for m in models:
        metrics = m.get("metrics", {})
        a = metrics.get("test_site_a", {})
        b = metrics.get("test_site_b", {})
        config = m.get("training", {}).get("config", {})
        init = config.get("init_from")
        lines.append(
            f"| {m['name']} | {m['resolution']} | {m['architecture']} | {m['downsample']} | "
            f"{_fmt(m['threshold'])} | {_fmt(metrics.get('validation', {}).get('auroc'))} | "
            f"{_fmt(a.get('auroc'))} ({_fmt(a.get('n'))}) | "
            f"{_fmt(b.get('auroc'))} ({_fmt(b.get('n'))}) | "
            f"{m.get('training', {}).get('data', 'n/a')} | "
            f"{Path(init).parent.name if init else 'scratch'} |"
        )
    lines += [
        "",
        "| R | temperature | data set | n | ECE before -> after | cross-entropy before -> after "
        "| flagged out of distribution |",
        "|---:|---:|---|---:|---|---|---:|",
    ]
    for m in models:
        calibration, ood = m.get("calibration") or {}, m.get("ood") or {}
        for name, ece in (calibration.get("ece") or {}).items():
            flagged = (ood.get("flagged") or {}).get(name, {})
            lines.append(
                f"| {m['resolution']} | {_fmt(calibration.get('temperature'))} | {name} | "
                f"{ece.get('n')} | {_fmt(ece.get('before'))} -> {_fmt(ece.get('after'))} | "
                f"{_fmt(ece.get('nll_before'))} -> {_fmt(ece.get('nll_after'))} | "
                f"{_rate(flagged.get('rate'))} |"
            )
    thresholds = ", ".join(
        f"{m['resolution']} px {_fmt((m.get('ood') or {}).get('threshold'), '.2f')}" for m in models
    )
    uses = sorted({m.get("intended_use", "") for m in models})
    return (
        "\n".join(lines)
        + f"\n\nOOD thresholds (Mahalanobis distance): {thresholds}."
        + "\n\nIntended use: "
        + " / ".join(uses)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest", type=Path, nargs="?", default=Path("models/manifest.json"))
    args = parser.parse_args()
    print(model_card(json.loads(args.manifest.read_text())))  # noqa: T201 - the output


if __name__ == "__main__":
    main()
