"""Checkpoints: save atomically, load, and rebuild the model they hold (torch).

A checkpoint is a dict. Every one carries ``model_state`` (the ``state_dict``) and
``model_config`` (``architecture``, ``downsample``, ``num_classes``, ``resolution``,
``labels``): enough to rebuild the network with :func:`model_from_checkpoint`. Training
checkpoints (``best.pt``, ``last.pt``) add the training config, the epoch, the operating
threshold, validation metrics and, for ``last.pt``, the optimiser state; the ``.pt`` file
a manifest lists holds the first two keys only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cxrmodel.networks import CXRClassifier, build_model


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a half checkpoint behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, on the CPU (``weights_only=False``: it holds plain configs)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def model_from_checkpoint(state: dict[str, Any], *, channels_last: bool = False) -> CXRClassifier:
    """Rebuild the model of a checkpoint (eval mode, CPU); ``channels_last`` for fast
    inference in torch (see :func:`use_channels_last`), not for export."""
    config = dict(state["model_config"])
    model = build_model(
        architecture=config["architecture"],
        downsample=config["downsample"],
        num_classes=int(config["num_classes"]),
    )
    model.load_state_dict(state["model_state"])
    if channels_last:
        use_channels_last(model)
    return model.eval()


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convert ``model``'s 4-d parameters to channels-last (NHWC) memory format, in place.

    Inputs need no conversion: with one input channel NCHW and NHWC are the same bytes,
    and a convolution with channels-last weights returns channels-last activations. On CPU
    oneDNN then runs its NHWC kernels without layout reorders (see
    ``benchmarks/results/training.md``); values agree with NCHW to float rounding.
    """
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
