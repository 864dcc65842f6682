"""Single-channel DenseNet classifiers with a choice of downsampling and an in-graph Grad-CAM.

Two architectures, both torchvision DenseNet-BC (``torchvision.models.DenseNet``; nothing
is ever downloaded), overall stride 32, so the CAM grid is ``R/32``:

* ``densenet121``: ``torchvision.models.densenet121(weights=None)`` (growth 32, blocks
  (6, 12, 24, 16), 64 stem features; 1024 final features).
* ``compact``: a small DenseNet for CPU demos and tests (growth 12, blocks (2, 2, 2, 2),
  32 stem features, bottleneck 4; 49 final features), with the same stem (7x7/s2 conv +
  pool). On 2 CPU cores it trains at ~55 images/s at 256 px, ~12 at 512, ~2 at 1024.

Input: float32 ``[N, 1, R, R]`` normalised as :mod:`imaging.preprocess` does
(``(x - 0.5) / 0.25``), ``R`` a multiple of 32 (any size runs; odd feature sizes are
handled by each pooling's own rule). Output: logits ``[N, num_classes]``.

``downsample`` picks what replaces the stride-2 *pooling* (the stem max-pool and the
average pools of the three transitions); the stem 7x7 conv keeps stride 2 in every
variant (as in Zhang's reference anti-aliased DenseNet: a stride-1 stem conv would
quadruple the most expensive activation at 1024 px):

* ``standard``: torchvision as is (max-pool 3x3/s2/p1; avg-pool 2x2/s2).
* ``blurpool``: Zhang 2019 / ``antialiased-cnns``: stem max-pool 2x2/s1 then
  BlurPool ``[1,3,3,1]``/s2; transitions BlurPool ``[1,3,3,1]``/s2 (reflect padding).
* ``flc``: stem max-pool 3x3/s1/p1 (size-preserving, so the transform sees an even size)
  then FLC pooling; transitions FLC pooling.
* ``asap``: as ``flc`` with the Hamming-tapered spectrum (see :mod:`training.antialias`).

None of the replacements has parameters, so ``state_dict`` keys are the same for all
four variants (and match torchvision's ``features.*``): weights move between variants.

The feature extractor ends with a real ``nn.ReLU(inplace=False)`` module
(``features.relu5``; torchvision applies it functionally and in place), the Grad-CAM
target layer, so hooks see post-ReLU activations ``A`` and Grad-CAM equals classic CAM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the torch idiom
from torchvision.models.densenet import _DenseLayer, _Transition

from cxrmodel.antialias import BlurPool2d, FrequencyPool2d, Window
from cxrmodel.vocab import Architecture, Downsample, choices

#: torchvision.models.DenseNet arguments of the compact variant
COMPACT_SPEC: dict[str, Any] = {
    "growth_rate": 12,
    "block_config": (2, 2, 2, 2),
    "num_init_features": 32,
    "bn_size": 4,
}


def _stem_pool(downsample: Downsample, channels: int) -> nn.Module:
    """Replacement of the stem max-pool 3x3/s2/p1: ``[N, C, H, W] -> [N, C, H/2, W/2]``."""
    if downsample == Downsample.STANDARD:
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    if downsample == Downsample.BLURPOOL:
        # "MaxBlurPool": dense max (evaluated at stride 1), then anti-aliased subsampling.
        return nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=1), BlurPool2d(channels, 4, 2))
    window: Window = "hamming" if downsample == Downsample.ASAP else "none"
    return nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1), FrequencyPool2d(window=window)
    )


def _transition_pool(downsample: Downsample, channels: int) -> nn.Module:
    """Replacement of the transitions' avg-pool 2x2/s2."""
    if downsample == Downsample.STANDARD:
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if downsample == Downsample.BLURPOOL:
        return BlurPool2d(channels, 4, 2)
    window: Window = "hamming" if downsample == Downsample.ASAP else "none"
    return FrequencyPool2d(window=window)


class CXRClassifier(nn.Module):
    """DenseNet on one input channel: ``features`` -> global average pool -> ``classifier``.

    ``features``: ``nn.Sequential`` mapping float32 ``[N, 1, R, R]`` to the post-ReLU
    feature map ``A`` ``[N, C, R/32, R/32]`` (its last module is the ReLU target layer).
    ``classifier``: ``nn.Linear(C, num_classes)``.
    """

    def __init__(
        self,
        architecture: str = Architecture.DENSENET121,
        downsample: str = Downsample.STANDARD,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        try:
            self.architecture = Architecture(architecture)
            self.downsample = Downsample(downsample)
        except ValueError:
            raise ValueError(
                f"architecture must be {choices(Architecture)} and downsample "
                f"{choices(Downsample)}; got {architecture!r}, {downsample!r}"
            ) from None
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes

        if self.architecture == Architecture.DENSENET121:
            base = torchvision.models.densenet121(weights=None)
        else:
            base = torchvision.models.DenseNet(**COMPACT_SPEC)
        features = base.features
        stem = features.conv0
        conv0 = nn.Conv2d(1, stem.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv0.weight)  # torchvision's initialisation
        features.conv0 = conv0
        features.pool0 = _stem_pool(self.downsample, stem.out_channels)
        for module in features.children():
            if isinstance(module, _Transition):
                module.pool = _transition_pool(self.downsample, module.conv.out_channels)
        features.add_module("relu5", nn.ReLU(inplace=False))
        self.features: nn.Sequential = features
        num_features = base.classifier.in_features
        self.classifier = nn.Linear(num_features, num_classes)
        nn.init.zeros_(self.classifier.bias)

    @property
    def target_layer(self) -> nn.Module:
        """The final ReLU module (``features.relu5``): the Grad-CAM target layer."""
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        """float32 ``[N, 1, R, R]`` -> logits ``[N, num_classes]``."""
        logits: Tensor = self.classifier(self.features(x).mean(dim=(2, 3)))
        return logits

    @property
    def embedding_size(self) -> int:
        """``C``: channels of the last feature map, the size of the ``embedding`` output."""
        return int(self.classifier.in_features)

    def forward_explained(self, x: Tensor, class_index: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """One forward pass: logits ``[N, num_classes]``, the raw Grad-CAM ``[N, R/32, R/32]``
        of one class and the embedding ``[N, C]`` (the pooled features, the classifier's
        input): the exported graph's three outputs (:mod:`cxrmodel.interface`).

        With ``logit = W . mean_hw(A) + b`` the gradient of the logit w.r.t. ``A`` is
        ``W_c / (h w)`` at every position, so Grad-CAM's channel weights (mean gradient)
        are ``W_c / (h w)`` and ``cam = ReLU(sum_c W_c / (h w) * A_c)``: no backward pass.
        Unnormalised (``imaging.saliency.normalise_cam`` scales it downstream).
        """
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class_index {class_index} out of range for {self.num_classes}")
        a = self.features(x)
        embedding = a.mean(dim=(2, 3))
        logits = self.classifier(embedding)
        h, w = a.shape[-2:]
        weight = self.classifier.weight[class_index].reshape(1, -1, 1, 1) / (h * w)
        # A 1x1 convolution: one standard op in ONNX / TensorRT for the channel-weighted sum.
        cam = F.relu(F.conv2d(a, weight)).squeeze(1)
        return logits, cam, embedding

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each dense layer's concat+BN+ReLU+1x1 conv in backward (torchvision's
        ``memory_efficient``): the quadratic concatenations are not stored. Outputs and
        gradients are unchanged; note that in train mode BatchNorm running statistics
        of the recomputed ``norm1`` layers are updated twice per step (a torchvision
        property of checkpointing)."""
        for module in self.modules():
            if isinstance(module, _DenseLayer):
                module.memory_efficient = enabled

    def config(self) -> dict[str, Any]:
        """JSON-able ``{"architecture", "downsample", "num_classes"}`` for :func:`build_model`."""
        return {
            "architecture": self.architecture.value,
            "downsample": self.downsample.value,
            "num_classes": self.num_classes,
        }


# Old torchvision checkpoints name dense-layer parameters "norm.1.weight"; now "norm1.weight".
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def load_torchvision_weights(model: CXRClassifier, path: str | Path) -> None:
    """Load a local torchvision DenseNet ImageNet ``state_dict`` file into ``model.features``.

    The RGB stem conv ``[C, 3, 7, 7]`` is summed over its input channels into ``[C, 1, 7,
    7]`` (the response to a gray image replicated into R, G and B); the ImageNet
    classifier is dropped (``model.classifier`` keeps its fresh initialisation). Missing
    ``num_batches_tracked`` counters are tolerated; any other mismatch raises.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    features: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        if key.startswith("features."):
            features[key.removeprefix("features.")] = value
        elif not key.startswith("classifier."):
            raise ValueError(f"{path}: unexpected key {key!r} in a torchvision DenseNet state dict")
    conv0 = features.get("conv0.weight")
    if conv0 is None:
        raise ValueError(f"{path}: no features.conv0.weight; not a torchvision DenseNet")
    if conv0.shape[1] == 3:
        features["conv0.weight"] = conv0.sum(dim=1, keepdim=True)
    result = model.features.load_state_dict(features, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit {model.architecture}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def build_model(
    architecture: str = Architecture.DENSENET121,
    downsample: str = Downsample.STANDARD,
    num_classes: int = 1,
    pretrained: str | Path | None = None,
) -> CXRClassifier:
    """Build a :class:`CXRClassifier`; ``pretrained``: a local torchvision state dict file."""
    model = CXRClassifier(architecture, downsample, num_classes)
    if pretrained is not None:
        load_torchvision_weights(model, pretrained)
    return model
