"""The model card of what ``models/manifest.json`` holds, as a markdown table.

uv run python -m training.model_card models/manifest.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def model_card(manifest: dict[str, Any]) -> str:
    """Markdown: one row per model with its data, threshold and test metrics."""
    lines = [
        "| model | R | architecture | downsample | threshold | val AUROC | "
        "test site a AUROC (n) | test site b AUROC (n) | trained on | init from |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    for m in sorted(manifest["models"], key=lambda m: (m["name"], m["resolution"])):
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
    uses = sorted({m.get("intended_use", "") for m in manifest["models"]})
    return "\n".join(lines) + "\n\nIntended use: " + " / ".join(uses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest", type=Path, nargs="?", default=Path("models/manifest.json"))
    args = parser.parse_args()
    print(model_card(json.loads(args.manifest.read_text())))  # noqa: T201 - the output


if __name__ == "__main__":
    main()
