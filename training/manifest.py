"""``models/manifest.json``: one entry per exported model (DESIGN.md, "Model artifacts").

Entry layout (JSON)::

    {"name", "version", "resolution", "architecture", "downsample",
     "files": {"onnx": {"path": "<relative to models/>", "sha256": "…"}, "plan": …, "pt": …},
     "input": {"name": "image", "dtype": "float32", "shape": [null, 1, R, R], "channels": 1,
               "normalisation": imaging.preprocess.NORMALISATION},
     "outputs": {"logit": [null, K], "cam": [null, R/32, R/32], "cam_class_index": 0},
     "labels": [...], "threshold": t, "threshold_rule": "…", "metrics": {...},
     "training": {...}, "intended_use": "…"}

``files`` holds only the artifacts that exist (``plan`` is absent without TensorRT).
Entries are identified by ``(name, resolution)``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from imaging.preprocess import NORMALISATION
from training.export import sha256_file

MANIFEST_NAME = "manifest.json"
FILE_KINDS = ("onnx", "plan", "pt")


def _relative(path: Path, models_dir: Path) -> str:
    """``path`` relative to ``models_dir`` in POSIX form; raises if it lies outside."""
    resolved = (path if path.is_absolute() else models_dir / path).resolve()
    try:
        return resolved.relative_to(models_dir.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the models directory {models_dir}") from None


def manifest_entry(
    *,
    name: str,
    version: str,
    resolution: int,
    architecture: str,
    downsample: str,
    files: dict[str, Path],
    models_dir: Path,
    threshold: float,
    threshold_rule: str,
    metrics: dict[str, Any],
    training: dict[str, Any],
    intended_use: str,
    labels: list[str],
) -> dict[str, Any]:
    """Build one manifest entry; hashes the files now (they must exist inside ``models_dir``).

    ``files``: ``{"onnx": path, "plan": path, "pt": path}`` (``onnx`` required, the others
    optional); relative paths are taken relative to ``models_dir``. ``threshold`` is the
    operating point on the model's probability and ``threshold_rule`` how it was chosen
    (e.g. "Youden J on validation fold"). ``intended_use`` is stored verbatim.
    """
    models_dir = Path(models_dir)
    if not name or not version:
        raise ValueError("name and version must be non-empty")
    if resolution < 32 or resolution % 32:
        raise ValueError(f"resolution must be a positive multiple of 32, got {resolution}")
    unknown = set(files) - set(FILE_KINDS)
    if unknown:
        raise ValueError(f"unknown file kinds {sorted(unknown)}; allowed {FILE_KINDS}")
    if "onnx" not in files:
        raise ValueError("files must include 'onnx'")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not threshold_rule:
        raise ValueError("threshold_rule must say how the threshold was chosen")
    if not labels:
        raise ValueError("labels must name at least one class")
    entries: dict[str, dict[str, str]] = {}
    for kind in FILE_KINDS:
        if kind not in files:
            continue
        path = Path(files[kind])
        absolute = path if path.is_absolute() else models_dir / path
        if not absolute.is_file():
            raise FileNotFoundError(f"{kind} file {absolute} does not exist")
        entries[kind] = {"path": _relative(absolute, models_dir), "sha256": sha256_file(absolute)}
    grid = resolution // 32
    return {
        "name": name,
        "version": version,
        "resolution": int(resolution),
        "architecture": architecture,
        "downsample": downsample,
        "files": entries,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": [None, 1, resolution, resolution],
            "channels": 1,
            "normalisation": dict(NORMALISATION),
        },
        "outputs": {
            "logit": [None, len(labels)],
            "cam": [None, grid, grid],
            "cam_class_index": 0,
        },
        "labels": list(labels),
        "threshold": float(threshold),
        "threshold_rule": threshold_rule,
        "metrics": metrics,
        "training": training,
        "intended_use": intended_use,
    }


def load_manifest(models_dir: str | Path) -> dict[str, Any]:
    """Read ``models_dir/manifest.json``; ``{"models": []}`` when there is none yet."""
    path = Path(models_dir) / MANIFEST_NAME
    if not path.exists():
        return {"models": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError(f"{path}: expected an object with a 'models' list")
    return data


def update_manifest(models_dir: str | Path, entry: dict[str, Any]) -> Path:
    """Insert ``entry``, replacing any entry with the same ``(name, resolution)``.

    The file is written atomically (temporary file in the same directory, then
    ``os.replace``), so a reader never sees a half-written manifest. Entries stay in
    insertion order; a replaced entry keeps its position. Returns the manifest path.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(models_dir)
    key = (entry["name"], int(entry["resolution"]))
    models: list[dict[str, Any]] = manifest["models"]
    for i, existing in enumerate(models):
        if (existing.get("name"), int(existing.get("resolution", -1))) == key:
            models[i] = entry
            break
    else:
        models.append(entry)
    path = models_dir / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json.tmp", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
