"""The one rule for a model's input resolution ``R`` (the side of the square input).

Every network here has overall stride 32 (the CAM grid is ``R / 32``), so ``R`` is a
multiple of 32; 2048 bounds memory (DenseNet-121 at 2048 px needs about 20 GB to train).
Training, export, the manifest, the service's settings and ``sharpcxr inspect`` all check
resolutions with :func:`check_resolution`.
"""

from __future__ import annotations

STRIDE = 32
MIN_RESOLUTION = 32
MAX_RESOLUTION = 2048
RULE = f"a multiple of {STRIDE} in {MIN_RESOLUTION}..{MAX_RESOLUTION}"


def check_resolution(resolution: object) -> int:
    """``resolution`` as an int when it follows the rule; ``ValueError`` saying the rule
    otherwise (``bool`` and non-integral values are refused too)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ValueError(f"resolution must be an integer, {RULE}; got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution % STRIDE:
        raise ValueError(f"resolution must be {RULE}, got {resolution}")
    return resolution


def cam_grid(resolution: int) -> int:
    """``G = R / 32``: the side of the CAM grid (and of the last feature map)."""
    return check_resolution(resolution) // STRIDE
