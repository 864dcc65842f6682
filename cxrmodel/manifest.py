"""``models/manifest.json``: one typed entry per exported model (DESIGN.md, "Model artifacts").

``{"models": [ManifestEntry, ...]}``. An entry names the model (``name``, ``version``,
``resolution``, ``architecture``, ``downsample``, ``labels``), its files with sha256
(paths relative to the models folder), its interface (``input``, ``outputs``), its
operating point (``threshold`` on the calibrated probability and the rule that chose it),
how its probability is calibrated (``calibration``), how its out-of-distribution score
is computed and thresholded (``ood``), what it was measured to do (``metrics``, with the
data), how it was trained (``training``) and what it is for (``intended_use``).

Entries are identified by ``(name, resolution)``. The file is written atomically, so a
reader never sees half a manifest. Reading validates every field, so a hand-edited or
stale manifest fails with the field that is wrong rather than deep inside the service.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cxrmodel.interface import CAM_CLASS_INDEX, INPUT, input_shape, output_shapes
from cxrmodel.resolution import check_resolution
from cxrmodel.vocab import Architecture, Downsample, FileKind

MANIFEST_NAME = "manifest.json"


class ModelFileError(RuntimeError):
    """A model artifact is missing, does not match the manifest, or breaks the interface."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRef(_Strict):
    """One artifact: ``path`` relative to the models folder (POSIX), and its sha256."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputSpec(_Strict):
    name: str = INPUT
    dtype: Literal["float32"] = "float32"
    shape: list[int | None]
    channels: int = 1
    normalisation: dict[str, Any]


class OutputSpec(_Strict):
    """Shapes of ``logit``, ``cam`` and ``embedding`` (``None``: the batch)."""

    logit: list[int | None]
    cam: list[int | None]
    embedding: list[int | None] | None = None  # absent in entries exported before 0.5
    cam_class_index: int = CAM_CLASS_INDEX


class CalibrationSpec(_Strict):
    """Temperature scaling: the served probability is ``sigmoid(logit / temperature)``.

    ``ece``: expected calibration error before and after, per data set:
    ``{name: {"before", "after", "n", "bins", "data"}}``.
    """

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0)
    fitted_on: str
    threshold_uncalibrated: float
    ece: dict[str, dict[str, Any]] = Field(default_factory=dict)


class OodSpec(_Strict):
    """The model's own out-of-distribution score (see :mod:`cxrmodel.ood`).

    ``threshold``: scores above it are out of distribution; ``threshold_rule`` says how it
    was chosen; the feature statistics are the entry's ``files["ood"]``. ``flagged``: the
    fraction of each named data set scored out of distribution (``{name: {"rate", "n",
    "data"}}``).
    """

    method: str
    feature: str
    threshold: float
    threshold_rule: str
    fitted_on: str
    n_fit: int = Field(ge=1)
    shrinkage: float = Field(ge=0, le=1)
    flagged: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ManifestEntry(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    resolution: int
    architecture: Architecture
    downsample: Downsample = Downsample.STANDARD
    files: dict[FileKind, FileRef]
    input: InputSpec
    outputs: OutputSpec
    labels: list[str] = Field(min_length=1)
    threshold: float = Field(ge=0, le=1)
    threshold_rule: str = Field(min_length=1)
    calibration: CalibrationSpec | None = None  # absent before 0.5: the service refuses it
    ood: OodSpec | None = None  # absent before 0.5: the service refuses it
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    intended_use: str = Field(min_length=1)

    @field_validator("resolution")
    @classmethod
    def _resolution_rule(cls, value: int) -> int:
        return check_resolution(value)

    @field_validator("files")
    @classmethod
    def _has_onnx(cls, value: dict[FileKind, FileRef]) -> dict[FileKind, FileRef]:
        if FileKind.ONNX not in value:
            raise ValueError("files must include 'onnx'")
        return value

    @property
    def label(self) -> str:
        """``name @ R px``, for messages."""
        return f"{self.name} @ {self.resolution} px"

    def path_of(self, kind: FileKind, models_dir: Path) -> Path:
        """The absolute path of this entry's ``kind`` file (not checked)."""
        return (Path(models_dir) / self.files[kind].path).resolve()

    def verified_path(self, kind: FileKind, models_dir: Path, why: str = "") -> Path:
        """The path of the ``kind`` file after checking that it exists and that its
        sha256 matches; :class:`ModelFileError` naming the file otherwise. ``why`` says
        who needs the file (for the message)."""
        if kind not in self.files:
            need = f", which {why} needs" if why else ""
            raise ModelFileError(f"model {self.label} has no {kind.value!r} file{need}")
        path = self.path_of(kind, models_dir)
        if not path.is_file():
            raise ModelFileError(
                f"model file {path} (model {self.label}) is missing; run `make models` or "
                "`sharpcxr export`"
            )
        actual = sha256_file(path)
        if actual != self.files[kind].sha256:
            raise ModelFileError(
                f"model file {path} does not match the manifest: sha256 {actual} != expected "
                f"{self.files[kind].sha256}; the file was changed after export, re-export it"
            )
        return path


class Manifest(_Strict):
    models: list[ManifestEntry] = Field(default_factory=list)

    def upsert(self, entry: ManifestEntry) -> Manifest:
        """A copy with ``entry`` replacing the one of the same ``(name, resolution)`` in
        place, or appended."""
        models = list(self.models)
        for i, existing in enumerate(models):
            if (existing.name, existing.resolution) == (entry.name, entry.resolution):
                models[i] = entry
                break
        else:
            models.append(entry)
        return Manifest(models=models)

    def by_resolution(self) -> dict[int, ManifestEntry]:
        """Entries by resolution; the last entry of a resolution wins."""
        return {entry.resolution: entry for entry in self.models}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_ref(path: str | Path, models_dir: str | Path) -> FileRef:
    """Hash ``path`` (absolute, or relative to ``models_dir``) into a :class:`FileRef`;
    ``FileNotFoundError`` when it does not exist, ``ValueError`` when it lies outside."""
    models_dir = Path(models_dir)
    path = Path(path)
    absolute = (path if path.is_absolute() else models_dir / path).resolve()
    if not absolute.is_file():
        raise FileNotFoundError(f"{absolute} does not exist")
    try:
        relative = absolute.relative_to(models_dir.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the models directory {models_dir}") from None
    return FileRef(path=relative, sha256=sha256_file(absolute))


def new_entry(
    *,
    name: str,
    version: str,
    resolution: int,
    architecture: str,
    downsample: str,
    files: dict[str, Path],
    models_dir: Path,
    labels: list[str],
    embedding_size: int | None,
    threshold: float,
    threshold_rule: str,
    normalisation: dict[str, Any],
    intended_use: str,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    calibration: CalibrationSpec | None = None,
    ood: OodSpec | None = None,
) -> ManifestEntry:
    """Build an entry, hashing ``files`` (``{kind: path}``, ``onnx`` required) now.

    Raises ``ValueError`` for an unknown file kind or an invalid field,
    ``FileNotFoundError`` for a missing file.
    """
    unknown = sorted(set(files) - {k.value for k in FileKind})
    if unknown:
        raise ValueError(f"unknown file kinds {unknown}; allowed {[k.value for k in FileKind]}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    shapes = output_shapes(resolution, len(labels), embedding_size or 0)
    try:
        return ManifestEntry(
            name=name,
            version=version,
            resolution=resolution,
            architecture=architecture,  # a string: pydantic validates it into the enum
            downsample=downsample,
            files={FileKind(k): file_ref(p, models_dir) for k, p in files.items()},
            input=InputSpec(shape=input_shape(resolution), normalisation=dict(normalisation)),
            outputs=OutputSpec(
                logit=shapes["logit"],
                cam=shapes["cam"],
                embedding=shapes["embedding"] if embedding_size else None,
            ),
            labels=list(labels),
            threshold=threshold,
            threshold_rule=threshold_rule,
            calibration=calibration,
            ood=ood,
            metrics=metrics or {},
            training=training or {},
            intended_use=intended_use,
        )
    except ValidationError as exc:
        raise ValueError(_first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "invalid manifest entry: " + "; ".join(problems[:5])


def read_manifest(models_dir: str | Path, *, missing_ok: bool = False) -> Manifest:
    """Read and validate ``models_dir/manifest.json``.

    A missing file is an empty manifest with ``missing_ok``, else :class:`ModelFileError`
    with what to run; an invalid one is :class:`ModelFileError` naming the field.
    """
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        if missing_ok:
            return Manifest()
        raise ModelFileError(
            f"no manifest at {path}; run `make models` (demo models) or `sharpcxr export`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelFileError(f"{path}: expected an object with a 'models' list")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ModelFileError(f"{path}: {_first_problem(exc)}") from None


def write_manifest(models_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest`` atomically (a temporary file in the same folder, fsync'd, then
    ``os.replace``); returns the path."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / MANIFEST_NAME
    payload = manifest.model_dump(mode="json")
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json.tmp", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def upsert_entry(models_dir: str | Path, entry: ManifestEntry) -> Path:
    """Add ``entry`` to ``models_dir``'s manifest (replacing its ``(name, resolution)``)."""
    manifest = read_manifest(models_dir, missing_ok=True).upsert(entry)
    return write_manifest(models_dir, manifest)
