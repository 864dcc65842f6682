"""Radiograph-suitable augmentation of model inputs, in torch (CPU or GPU, batched or not).

Applied to the model input ``(1, R, R)`` or ``(N, 1, R, R)`` (float32, normalised as
:mod:`imaging.preprocess` does: ``display = x * STD + MEAN``), after preprocessing, so the
imaging path itself is untouched and the same augmentation runs on any resolution.

What it does, each range multiplied by ``strength`` in ``[0, 1]`` (0 = exact identity):

* rotation uniform in ``±7°`` (patient positioning varies by a few degrees);
* isotropic scale uniform in ``[0.9, 1.1]`` (magnification, patient size);
* translation uniform in ``±5 %`` of the side on each axis (centring);
* contrast uniform in ``[0.9, 1.1]`` about mid-grey and brightness uniform in ``±0.1``, in
  display units (``[0, 1]``), then clipped to ``[0, 1]`` so inputs keep the range the
  service produces; exposure and processing differ between sites;
* optionally (``gamma`` > 0, off by default) a tone-curve change ``display ** g`` with
  ``log g`` uniform in ``±log(1 + gamma)``, before contrast and brightness: sites differ in
  their processing curve far more than a linear contrast change covers (the study's shift
  ablation measures what that costs; see README, "Resolution study").

Not done, on purpose: **no flips**. A vertical flip makes an impossible radiograph; a
horizontal one swaps the heart to the right (situs inversus is rare) and moves laterality
markers, so the model would learn that side does not matter, which it does (the anatomy is
asymmetric). No elastic warps, crops or cut-out either: they can remove or fake the thin
pleural line that *is* the pneumothorax.

Geometry uses one affine sampling grid + ``grid_sample`` (bilinear for images, nearest for
masks); what moves in from outside is the letterbox padding value (black), not mid-grey.
Intensity changes apply to the image content only when a ``content`` mask is given (the
padding stays exactly the padding value). Deterministic given a ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F  # noqa: N812 - the torch idiom

from imaging.preprocess import NORMALISATION_MEAN, NORMALISATION_STD, PAD_DISPLAY_VALUE

_PAD = (PAD_DISPLAY_VALUE - NORMALISATION_MEAN) / NORMALISATION_STD


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters, each a float32 tensor ``[N]`` (``translate``: ``[N, 2]``, x then
    y, in normalised grid units where the side is 2)."""

    angle_deg: torch.Tensor
    scale: torch.Tensor
    translate: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor | None = None  # None = 1 (no tone-curve change)


class Augment:
    """Random affine + intensity augmentation; see the module docstring for the ranges."""

    def __init__(
        self,
        strength: float = 1.0,
        *,
        rotation_deg: float = 7.0,
        scale: float = 0.1,
        translate: float = 0.05,
        brightness: float = 0.1,
        contrast: float = 0.1,
        gamma: float = 0.0,
    ) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.strength = float(strength)
        self.rotation_deg = rotation_deg
        self.scale = scale
        self.translate = translate
        self.brightness = brightness
        self.contrast = contrast
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"Augment(strength={self.strength}, gamma={self.gamma})"

    @property
    def is_identity(self) -> bool:
        """True when ``strength`` is 0 (the output is a copy of the input)."""
        return self.strength == 0.0

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw parameters for ``n`` images (on the CPU; ``generator`` makes them reproducible)."""
        s = self.strength

        def uniform(*shape: int) -> torch.Tensor:
            # in [-1, 1)
            return torch.rand(*shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0

        params = AugmentParams(
            angle_deg=uniform(n) * self.rotation_deg * s,
            scale=1.0 + uniform(n) * self.scale * s,
            translate=uniform(n, 2) * 2.0 * self.translate * s,
            brightness=uniform(n) * self.brightness * s,
            contrast=1.0 + uniform(n) * self.contrast * s,
        )
        if self.gamma == 0.0:
            return params  # drawn last and only when on: gamma 0 keeps the old random stream
        log_g = uniform(n) * math.log1p(self.gamma) * s
        return dataclasses.replace(params, gamma=torch.exp(log_g))

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment ``image`` (``(1, R, R)`` or ``(N, 1, R, R)``); same shape and dtype."""
        return self.apply(image, generator=generator)[0]

    def apply(
        self,
        image: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        content: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        params: AugmentParams | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``image`` and move ``mask`` with it.

        ``image``: float ``(1, R, R)`` or ``(N, 1, R, R)``, normalised model input.
        ``mask``: bool/float ``(R, R)`` or ``(N, R, R)``, warped with nearest sampling,
        returned as bool. ``content``: bool, shaped like ``mask``, True where the image is
        (not letterbox padding); intensity changes only touch it. ``params`` overrides the
        random draw. Returns ``(image, mask)`` in the input's shapes (mask None if not given).
        """
        batched = image.dim() == 4
        if not batched and image.dim() != 3:
            raise ValueError(f"image must be (1, R, R) or (N, 1, R, R), got {tuple(image.shape)}")
        x = image if batched else image.unsqueeze(0)
        n = x.shape[0]
        if self.is_identity and params is None:
            out_mask = None if mask is None else mask.clone().bool()
            return image.clone(), out_mask
        p = params if params is not None else self.sample(n, generator)
        dev, dtype = x.device, x.dtype

        # ---- intensity, in display units, content only
        c = p.contrast.to(dev, dtype).view(n, 1, 1, 1)
        b = p.brightness.to(dev, dtype).view(n, 1, 1, 1)
        display = x * NORMALISATION_STD + NORMALISATION_MEAN
        if p.gamma is not None:
            display = display.clamp(0.0, 1.0) ** p.gamma.to(dev, dtype).view(n, 1, 1, 1)
        changed = ((display - 0.5) * c + 0.5 + b).clamp(0.0, 1.0)
        changed = (changed - NORMALISATION_MEAN) / NORMALISATION_STD
        if content is not None:
            keep = content.to(dev).bool().view(n, 1, *x.shape[-2:])
            changed = torch.where(keep, changed, x)

        # ---- geometry: output grid -> input grid (affine_grid convention)
        grid = _grid(_theta(p).to(dev, dtype), x.shape[-1], x.shape[-2])
        # Sample (x - pad) with zero padding so whatever enters from outside is the pad value.
        warped = F.grid_sample(
            changed - _PAD, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        out = warped + _PAD

        out_mask = None
        if mask is not None:
            m = mask.to(dev).float().view(n, 1, *x.shape[-2:])
            m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            out_mask = (m[:, 0] > 0.5).view(mask.shape)
        return (out if batched else out[0]), out_mask


def _theta(p: AugmentParams) -> torch.Tensor:
    """``[N, 2, 3]`` affine: input = rotation(angle) / scale @ output + translate."""
    rad = p.angle_deg * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / p.scale, torch.sin(rad) / p.scale
    theta = torch.zeros(p.angle_deg.shape[0], 2, 3, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin, p.translate[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, p.translate[:, 1]
    return theta


def _grid(theta: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, 1, H, W), align_corners=False)``, elementwise.

    Same numbers (pixel centres at ``(2k + 1) / size - 1``), but without the batched matmul
    that torch runs for ``affine_grid``, which costs ~15 ms even at 64 px on some CPUs.
    """
    dev, dtype = theta.device, theta.dtype
    xs = ((torch.arange(width, device=dev, dtype=dtype) * 2 + 1) / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, device=dev, dtype=dtype) * 2 + 1) / height - 1).view(1, height, 1)
    t = theta.view(-1, 2, 3, 1, 1)
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


__all__ = ["Augment", "AugmentParams"]
