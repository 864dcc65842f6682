"""The one availability rule for TensorRT, shared by the plan builder and the backend.

The builder (``training/export.py``) and the backend (``service/backends/tensorrt.py``)
are written against the **TensorRT 10** Python API: tensor-name I/O,
``execute_async_v3``, ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` and an
``IInt8EntropyCalibrator2``. TensorRT 11 removed the weak-typing builder flags and implicit
INT8 calibration (strongly typed networks take their precision from the ONNX graph), so
an 11.x install is refused here with that reason rather than failing half-way through a
build. ``tensorrt`` and ``torch`` are imported only when the check runs.
"""

from __future__ import annotations

import importlib
from typing import Any

SUPPORTED_MAJOR = 10
INSTALL_HINT = (
    f"TensorRT needs the TensorRT {SUPPORTED_MAJOR} Python package and a CUDA GPU: "
    f"`pip install 'tensorrt>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}'` (matching the CUDA of "
    "torch) on a machine where torch.cuda.is_available() is True"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (typed ``Any``: it ships no stubs); raises ``ImportError``."""
    return importlib.import_module("tensorrt")


def tensorrt_status() -> tuple[bool, str]:
    """``(True, "")`` when TensorRT can build and run plans here, else ``(False, reason)``.

    Checks, in order: the ``tensorrt`` package imports, its major version is the one this
    code is written for, and torch sees a CUDA device.
    """
    try:
        trt = import_tensorrt()
    except (ImportError, OSError) as exc:  # OSError: the package is there, libnvinfer not
        return False, f"the tensorrt Python package cannot be imported ({exc})"
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major != SUPPORTED_MAJOR:
        removed = (
            "; TensorRT 11 removed BuilderFlag.FP16/INT8 and int8_calibrator, which the "
            "builder uses"
            if major > SUPPORTED_MAJOR
            else ""
        )
        return (
            False,
            f"TensorRT {version} is installed, TensorRT {SUPPORTED_MAJOR}.x is needed{removed}",
        )
    import torch

    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device (torch.cuda.is_available() is False)"
    return True, ""
