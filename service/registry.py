"""The model registry: which model serves which resolution, read from the manifest.

At start-up :func:`load_registry` reads ``models/manifest.json``, keeps the entries for the
configured resolutions (the last entry wins when several share one), verifies the sha256
of each file it is about to load against the manifest (a mismatch or a missing file stops
the start with a message naming the file), builds the configured backend and warms it at
batch 1 and the maximum batch size. Only then does the service report ready.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.backends.base import Backend
from service.errors import ModelFileError, UnknownResolutionError
from service.settings import Settings

log = logging.getLogger(__name__)

#: which manifest file each backend loads
BACKEND_FILE = {"onnxruntime": "onnx", "tensorrt": "plan", "torch": "pt"}


@dataclass
class ServedModel:
    """One manifest entry with its loaded backend (internal; the API shows a subset)."""

    name: str
    version: str
    resolution: int
    architecture: str
    downsample: str
    threshold: float
    threshold_rule: str
    intended_use: str
    labels: list[str]
    metrics: dict[str, Any]
    training: dict[str, Any]
    file_kind: str
    sha256: str
    backend: Backend
    load_seconds: float = 0.0

    def info(self) -> dict[str, Any]:
        """What ``/v1/models`` shows: identity, backend, operating point, intended use,
        and the manifest's metrics with the data they were measured on."""
        return {
            "name": self.name,
            "version": self.version,
            "resolution": self.resolution,
            "architecture": self.architecture,
            "downsample": self.downsample,
            "backend": self.backend.name,
            "saliency_methods": list(self.backend.methods),
            "sha256": self.sha256,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "labels": self.labels,
            "intended_use": self.intended_use,
            "metrics": self.metrics,
        }


@dataclass
class Registry:
    """Loaded models by resolution, and the resolution used when a request names none."""

    models: dict[int, ServedModel] = field(default_factory=dict)
    default_resolution: int = 0

    @property
    def resolutions(self) -> list[int]:
        return sorted(self.models)

    def get(self, resolution: int | None) -> ServedModel:
        """The model for ``resolution`` (``None``: the default); 422 listing the others."""
        wanted = self.default_resolution if resolution is None else resolution
        model = self.models.get(wanted)
        if model is None:
            raise UnknownResolutionError([wanted], self.resolutions)
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models[r] for r in self.resolutions)

    def close(self) -> None:
        for model in self.models.values():
            model.backend.close()
        self.models.clear()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(models_dir: Path) -> list[dict[str, Any]]:
    path = models_dir / "manifest.json"
    if not path.is_file():
        raise ModelFileError(
            f"no manifest at {path}; run `make models` (demo models) or `sharpcxr export`, "
            "or point SHARPCXR_MODELS_DIR at a directory holding manifest.json"
        )
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["models"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path} is not a manifest ({{'models': [...]}}): {exc}") from exc
    if not isinstance(entries, list):
        raise ModelFileError(f"{path}: 'models' must be a list")
    return [e for e in entries if isinstance(e, dict)]


def select_entries(
    entries: list[dict[str, Any]], resolutions: list[int], models_dir: Path
) -> dict[int, dict[str, Any]]:
    """Manifest entries by resolution (the last one of each resolution wins), restricted
    to ``resolutions`` when that is non-empty; a requested resolution without an entry is
    an error."""
    by_resolution: dict[int, dict[str, Any]] = {}
    for entry in entries:
        by_resolution[int(entry["resolution"])] = entry
    if not resolutions:
        if not by_resolution:
            raise ModelFileError(f"{models_dir / 'manifest.json'} lists no models")
        return by_resolution
    missing = [r for r in resolutions if r not in by_resolution]
    if missing:
        raise ModelFileError(
            f"SHARPCXR_RESOLUTIONS asks for {missing} but {models_dir / 'manifest.json'} has "
            f"models at {sorted(by_resolution)} only"
        )
    return {r: by_resolution[r] for r in resolutions}


def verified_file(entry: dict[str, Any], kind: str, models_dir: Path, backend: str) -> Path:
    """The path of ``entry``'s ``kind`` file after checking it exists and matches its sha256."""
    spec = (entry.get("files") or {}).get(kind)
    label = f"{entry.get('name')} @ {entry.get('resolution')}"
    if not spec:
        raise ModelFileError(
            f"model {label} has no {kind!r} file in the manifest, which SHARPCXR_BACKEND="
            f"{backend} needs"
            + (
                "; build a TensorRT plan with `sharpcxr export` on a GPU machine"
                if kind == "plan"
                else ""
            )
        )
    path = (models_dir / str(spec["path"])).resolve()
    if not path.is_file():
        raise ModelFileError(f"model file {path} (model {label}) is missing; run `make models`")
    actual = sha256_of(path)
    if actual != spec.get("sha256"):
        raise ModelFileError(
            f"model file {path} does not match the manifest: sha256 {actual} != expected "
            f"{spec.get('sha256')}; the file was changed after export, re-export it"
        )
    return path


def build_backend(kind: str, path: Path, resolution: int, settings: Settings) -> Backend:
    """Instantiate the configured backend (imports only what it needs)."""
    if kind == "onnxruntime":
        from service.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            path,
            resolution,
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
        )
    if kind == "torch":
        from service.backends.torch import TorchBackend

        return TorchBackend(
            path, resolution, device=settings.device, intra_op_threads=settings.intra_op_threads
        )
    if kind == "tensorrt":
        from service.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(path, resolution)
    raise ValueError(f"unknown backend {kind!r}")


def preflight(settings: Settings) -> list[Path]:
    """Check the manifest and every file the configured backend would load (existence and
    sha256), without loading anything; raises :class:`ModelFileError`. ``serve`` runs it
    before starting the server so that a bad model directory is one clear line, not a
    start-up traceback."""
    models_dir = settings.models_dir.resolve()
    entries = select_entries(read_manifest(models_dir), settings.resolutions, models_dir)
    kind = BACKEND_FILE[settings.backend]
    return [verified_file(e, kind, models_dir, settings.backend) for e in entries.values()]


def load_registry(settings: Settings) -> Registry:
    """Load, verify and warm every configured model; raises :class:`ModelFileError`."""
    models_dir = settings.models_dir.resolve()
    entries = select_entries(read_manifest(models_dir), settings.resolutions, models_dir)
    kind = BACKEND_FILE[settings.backend]
    registry = Registry()
    try:
        for resolution, entry in sorted(entries.items()):
            started = time.perf_counter()
            path = verified_file(entry, kind, models_dir, settings.backend)
            backend = build_backend(settings.backend, path, resolution, settings)
            backend.warm(tuple(sorted({1, settings.max_batch_size})))
            files = entry.get("files") or {}
            registry.models[resolution] = ServedModel(
                name=str(entry.get("name")),
                version=str(entry.get("version")),
                resolution=resolution,
                architecture=str(entry.get("architecture", "unknown")),
                downsample=str(entry.get("downsample", "standard")),
                threshold=float(entry["threshold"]),
                threshold_rule=str(entry.get("threshold_rule", "")),
                intended_use=str(entry.get("intended_use", "")),
                labels=list(entry.get("labels") or ["Pneumothorax"]),
                metrics=dict(entry.get("metrics") or {}),
                training=dict(entry.get("training") or {}),
                file_kind=kind,
                sha256=str(files[kind]["sha256"]),
                backend=backend,
                load_seconds=time.perf_counter() - started,
            )
            log.info(
                "model loaded",
                extra={
                    "model": entry.get("name"),
                    "resolution": resolution,
                    "backend": backend.name,
                    "load_s": round(registry.models[resolution].load_seconds, 3),
                },
            )
    except BaseException:
        registry.close()
        raise
    default = settings.default_resolution
    if default is None:
        default = max(registry.models)
    elif default not in registry.models:
        registry.close()
        raise ModelFileError(
            f"SHARPCXR_DEFAULT_RESOLUTION={default} is not loaded (loaded: {registry.resolutions})"
        )
    registry.default_resolution = default
    return registry
