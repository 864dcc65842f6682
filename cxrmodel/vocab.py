"""Closed vocabularies as string enums.

Each member *is* its string (``StrEnum``): ``Architecture("compact") is
Architecture.COMPACT``, ``Architecture.COMPACT == "compact"``, and it serialises to JSON
as ``"compact"``. Settings, the command line, configs and the manifest accept the plain
strings and reject anything else with the list of allowed values.
"""

from __future__ import annotations

from enum import StrEnum


class Architecture(StrEnum):
    """``densenet121``: torchvision's DenseNet-121; ``compact``: a small DenseNet for CPUs."""

    DENSENET121 = "densenet121"
    COMPACT = "compact"


class Downsample(StrEnum):
    """What replaces the network's stride-2 pooling (see :mod:`cxrmodel.networks`)."""

    STANDARD = "standard"
    BLURPOOL = "blurpool"
    FLC = "flc"
    ASAP = "asap"


class Dataset(StrEnum):
    """The training data's format (see ``training/datasets``)."""

    PHANTOMS = "phantoms"
    SIIM = "siim"
    NIH = "nih"
    CHEXPERT = "chexpert"


class Backend(StrEnum):
    """The inference runtime a service loads a model with."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    TORCH = "torch"


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class FileKind(StrEnum):
    """The files a manifest entry can list: ``onnx`` (the exported graph), ``plan`` (a
    TensorRT engine), ``pt`` (torch weights for the reference backend), ``ood`` (the
    training features' statistics behind the out-of-distribution score)."""

    ONNX = "onnx"
    PLAN = "plan"
    PT = "pt"
    OOD = "ood"


#: the model file each backend loads
BACKEND_FILE: dict[Backend, FileKind] = {
    Backend.ONNXRUNTIME: FileKind.ONNX,
    Backend.TENSORRT: FileKind.PLAN,
    Backend.TORCH: FileKind.PT,
}


def choices(enum: type[StrEnum]) -> str:
    """``"a | b | c"``: the allowed values, for help texts and error messages."""
    return " | ".join(member.value for member in enum)
