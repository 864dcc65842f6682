"""The model registry: which model serves which resolution, read from the manifest.

At start-up :func:`load_registry` reads ``models/manifest.json`` (:mod:`cxrmodel.manifest`),
keeps the entries for the configured resolutions (the last entry wins when several share
one), refuses entries without the calibration and out-of-distribution statistics every
answer needs, verifies the sha256 of each file it is about to load (a mismatch or a
missing file stops the start with a message naming the file), builds the configured
backend and warms it at batch 1 and the maximum batch size. Only then does the service
report ready.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cxrmodel.manifest import (
    CalibrationSpec,
    ManifestEntry,
    ModelFileError,
    OodSpec,
    read_manifest,
)
from cxrmodel.ood import FeatureStatistics, load_statistics
from cxrmodel.vocab import BACKEND_FILE, Backend, FileKind
from service.backends.base import Backend as InferenceBackend
from service.errors import UnknownResolutionError
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One manifest entry with what serving it needs: the loaded backend, the OOD feature
    statistics, and the sha256 of the file the backend loaded (internal; the API shows a
    subset)."""

    entry: ManifestEntry
    backend: InferenceBackend
    statistics: FeatureStatistics
    sha256: str

    @property
    def resolution(self) -> int:
        return self.entry.resolution

    @property
    def calibration(self) -> CalibrationSpec:
        assert self.entry.calibration is not None  # load_registry refuses entries without
        return self.entry.calibration

    @property
    def ood(self) -> OodSpec:
        assert self.entry.ood is not None  # load_registry refuses entries without
        return self.entry.ood


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


def select_entries(settings: Settings) -> dict[int, ManifestEntry]:
    """The manifest's entries for the configured resolutions (all when none are
    configured), each checked for what serving needs; :class:`ModelFileError` otherwise."""
    models_dir = settings.models_dir.resolve()
    try:
        by_resolution = read_manifest(models_dir).by_resolution()
    except ModelFileError as exc:
        raise ModelFileError(f"{exc} (SHARPCXR_MODELS_DIR says where the models are)") from None
    if not by_resolution:
        raise ModelFileError(f"{models_dir / 'manifest.json'} lists no models")
    missing = [r for r in settings.resolutions if r not in by_resolution]
    if missing:
        raise ModelFileError(
            f"SHARPCXR_RESOLUTIONS asks for {missing} but {models_dir / 'manifest.json'} has "
            f"models at {sorted(by_resolution)} only"
        )
    wanted = settings.resolutions or sorted(by_resolution)
    entries = {r: by_resolution[r] for r in wanted}
    for entry in entries.values():
        if entry.calibration is None or entry.ood is None or entry.outputs.embedding is None:
            raise ModelFileError(
                f"model {entry.label} was exported before sharpcxr 0.5 and lacks its "
                "calibration and out-of-distribution statistics, which every answer needs; "
                "re-export it with `sharpcxr export` (or rerun `make models`)"
            )
    return entries


def _files(entry: ManifestEntry, settings: Settings) -> tuple[Path, Path]:
    """The verified model file for the configured backend and the OOD statistics file."""
    models_dir = settings.models_dir.resolve()
    kind = BACKEND_FILE[settings.backend]
    why = f"SHARPCXR_BACKEND={settings.backend.value}"
    if kind is FileKind.PLAN and kind not in entry.files:
        why += " (build a TensorRT plan with `sharpcxr export` on a GPU machine)"
    model = entry.verified_path(kind, models_dir, why)
    statistics = entry.verified_path(FileKind.OOD, models_dir, "the out-of-distribution score")
    return model, statistics


def build_backend(path: Path, resolution: int, settings: Settings) -> InferenceBackend:
    """Instantiate the configured backend (imports only what it needs: the ONNX Runtime
    path imports neither torch nor the model code)."""
    if settings.backend is Backend.ONNXRUNTIME:
        from service.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            path, resolution, device=settings.device, intra_op_threads=settings.intra_op_threads
        )
    if settings.backend is Backend.TORCH:
        from service.backends.torch import TorchBackend

        return TorchBackend(
            path, resolution, device=settings.device, intra_op_threads=settings.intra_op_threads
        )
    from service.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(path, resolution)


# The Python packages each backend imports, and the install that brings them (issue #14:
# the base install carries no inference runtime; the `cpu` or `gpu` extra adds one).
RUNTIME_PACKAGES: dict[Backend, tuple[tuple[str, str], ...]] = {
    Backend.ONNXRUNTIME: (
        ("onnxruntime", "`pip install 'sharpcxr[cpu]'` (or `[gpu]`; uv: `uv sync --extra cpu`)"),
    ),
    Backend.TORCH: (
        ("torch", "`pip install 'sharpcxr[train]'` (uv: `uv sync --extra train`)"),
        ("pytorch_grad_cam", "`pip install 'sharpcxr[train]'` (uv: `uv sync --extra train`)"),
    ),
    Backend.TENSORRT: (("torch", "`pip install 'sharpcxr[gpu]'` (uv: `uv sync --extra gpu`)"),),
}


def check_runtime_installed(backend: Backend) -> None:
    """Raise :class:`ModelFileError` naming the extra to install when ``backend``'s runtime
    package is missing (found without importing it)."""
    for module, install in RUNTIME_PACKAGES[backend]:
        if importlib.util.find_spec(module) is None:
            raise ModelFileError(
                f"SHARPCXR_BACKEND={backend.value} needs the Python package {module!r}, which "
                f"is not installed: {install}"
            )


def preflight(settings: Settings) -> None:
    """Check the backend's runtime package, the manifest and every file the service would
    load (existence and sha256) without loading anything; raises :class:`ModelFileError`.
    ``serve`` runs it before starting the server, so that a bad install or model directory
    is one clear line, not a start-up traceback."""
    check_runtime_installed(settings.backend)
    for entry in select_entries(settings).values():
        _files(entry, settings)


def _load(entry: ManifestEntry, settings: Settings) -> ServedModel:
    started = time.perf_counter()
    model_path, statistics_path = _files(entry, settings)
    statistics = load_statistics(statistics_path)
    embedding = entry.outputs.embedding
    if embedding is None or statistics.size != embedding[-1]:
        raise ModelFileError(
            f"model {entry.label}: its OOD statistics are for embeddings of size "
            f"{statistics.size}, the model's are {embedding}; re-export it"
        )
    backend = build_backend(model_path, entry.resolution, settings)
    try:
        backend.warm(tuple(sorted({1, settings.max_batch_size})), statistics.size)
    except BaseException:
        backend.close()
        raise
    log.info(
        "model loaded",
        extra={
            "model": entry.name,
            "resolution": entry.resolution,
            "backend": backend.name,
            "load_s": round(time.perf_counter() - started, 3),
        },
    )
    kind = BACKEND_FILE[settings.backend]
    return ServedModel(entry, backend, statistics, entry.files[kind].sha256)


def load_registry(settings: Settings) -> Registry:
    """Load, verify and warm every configured model; raises :class:`ModelFileError`."""
    check_runtime_installed(settings.backend)
    entries = select_entries(settings)
    default = settings.default_resolution
    if default is not None and default not in entries:
        raise ModelFileError(
            f"SHARPCXR_DEFAULT_RESOLUTION={default} is not loaded (loaded: {sorted(entries)})"
        )
    registry = Registry(default_resolution=default or max(entries))
    try:
        for resolution, entry in sorted(entries.items()):
            registry.models[resolution] = _load(entry, settings)
    except BaseException:
        registry.close()
        raise
    return registry
