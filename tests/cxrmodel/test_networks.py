"""cxrmodel.networks: stride, anti-aliased pooling, in-graph Grad-CAM, checkpointing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cxrmodel.antialias import (
    BlurPool2d,
    FrequencyPool2d,
    binomial_filter,
    frequency_pool_fft,
    frequency_pool_matrix,
)
from cxrmodel.networks import CXRClassifier, build_model
from cxrmodel.vocab import Architecture, Downsample
from imaging.saliency import normalise_cam

ARCHITECTURES = list(Architecture)
DOWNSAMPLES = list(Downsample)


def randomise(model: CXRClassifier, seed: int = 0) -> CXRClassifier:
    """Random BN statistics/affines and a mostly positive head, in eval mode.

    Fresh BatchNorm (mean 0, var 1, identity affine) would make eval-mode parity checks
    nearly trivial; a mostly positive head keeps the CAM from being all zeros.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                # Re-draw convolutions from the seed too: the construction-time draws come
                # from the global RNG, which depends on what ran before this test.
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
                )
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        w = model.classifier.weight
        w.copy_(torch.randn(w.shape, generator=gen) * 0.1 + 0.05)
        model.classifier.bias.copy_(torch.randn(model.num_classes, generator=gen))
    return model.eval()


class GridGradCAM(GradCAM):  # type: ignore[misc]
    """pytorch-grad-cam's GradCAM, but "resized" to the CAM grid itself (a no-op resize).

    ``BaseCAM.compute_cam_per_layer`` applies ``scale_cam_image(cam, target_size)`` with
    ``target_size`` from ``get_target_width_height``; returning the grid size keeps its own
    min-max normalisation and skips the interpolation, so the comparison is at the grid.
    """

    grid: tuple[int, int] = (1, 1)

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        return self.grid


def gradcam_at_grid(model: CXRClassifier, x: torch.Tensor, class_index: int = 0) -> np.ndarray:
    """pytorch-grad-cam's normalised CAM ``[N, R/32, R/32]`` for ``model`` on ``x``."""
    g = x.shape[-1] // 32
    with GridGradCAM(model, target_layers=[model.target_layer]) as cam:
        cam.grid = (g, g)
        targets: list[Any] = [ClassifierOutputTarget(class_index)] * len(x)
        return np.asarray(cam(input_tensor=x, targets=targets))


# ------------------------------------------------------------------ anti-aliased pooling
@pytest.mark.parametrize("n", [4, 6, 8, 12, 16, 34, 64])
@pytest.mark.parametrize("window", ["none", "hamming"])
def test_frequency_pool_equals_torch_fft(n: int, window: Any) -> None:
    gen = torch.Generator().manual_seed(n)
    x64 = torch.randn(2, 3, n, n, dtype=torch.float64, generator=gen)
    pool = FrequencyPool2d(window)
    assert torch.allclose(pool(x64), frequency_pool_fft(x64, window), atol=1e-12, rtol=0)
    x32 = x64.float()
    assert (FrequencyPool2d(window)(x32) - frequency_pool_fft(x32, window)).abs().max() < 1e-5


def test_frequency_pool_matches_the_flc_reference_crop() -> None:
    """Grabinski et al.'s code (``int(n/4):int(3n/4)`` crop) for sizes divisible by 4."""
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    spec = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"))[:, :, 4:12, 4:12]
    reference = torch.fft.ifft2(torch.fft.ifftshift(spec), norm="forward").real
    assert torch.allclose(FrequencyPool2d()(x), reference, atol=1e-12)


def test_frequency_pool_nonsquare_and_odd_sizes() -> None:
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64)
    assert torch.allclose(FrequencyPool2d("hamming")(x), frequency_pool_fft(x, "hamming"))
    odd = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    padded = torch.nn.functional.pad(odd, (0, 1, 0, 1), mode="replicate")
    out = FrequencyPool2d()(odd)
    assert out.shape == (1, 2, 4, 5)
    assert torch.allclose(out, frequency_pool_fft(padded))


def test_frequency_pool_removes_aliasing_and_keeps_dc() -> None:
    n = 16
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    checker = ((-1.0) ** (yy + xx))[None, None]
    # Plain stride-2 subsampling aliases the Nyquist checkerboard to a constant 1 ...
    assert torch.all(checker[..., ::2, ::2] == 1)
    # ... the low-pass poolings remove it; constants pass unchanged (DC gain 1).
    for pool in (FrequencyPool2d("none"), FrequencyPool2d("hamming")):
        assert pool(checker).abs().max() < 1e-5
        assert torch.allclose(pool(torch.full((1, 1, n, n), 3.0)), torch.tensor(3.0), atol=1e-5)
    blurred = BlurPool2d(1)(checker)
    assert blurred[..., 1:-1, 1:-1].abs().max() < 1e-6  # reflect-padded border aside


def test_frequency_pool_operator_is_real_for_odd_half_length() -> None:
    assert np.abs(frequency_pool_matrix(6).imag).max() < 1e-12  # m = 3: symmetric set
    assert np.abs(frequency_pool_matrix(8).imag).max() > 1e-3  # m = 4: Nyquist term
    pool = FrequencyPool2d()
    pool(torch.zeros(1, 1, 6, 6))
    assert pool._buffers["op6_imag_u"] is None
    pool(torch.zeros(1, 1, 8, 8))
    assert pool._buffers["op8_imag_u"] is not None
    assert not pool.state_dict()  # constants, not weights


@pytest.mark.parametrize("size", [3, 4])
def test_blurpool_shapes_and_filter(size: int) -> None:
    f = binomial_filter(size)
    assert f.shape == (size, size) and torch.isclose(f.sum(), torch.tensor(1.0))
    pool = BlurPool2d(5, size)
    for n, expected in [(16, 8), (15, 8), (4, 2)]:
        assert pool(torch.randn(2, 5, n, n)).shape == (2, 5, expected, expected)
    assert torch.allclose(pool(torch.full((1, 5, 8, 8), 2.0)), torch.tensor(2.0))
    assert "filt" not in pool.state_dict()


# ------------------------------------------------------------------------- the models
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("downsample", DOWNSAMPLES)
def test_stride_32_everywhere(architecture: str, downsample: str) -> None:
    model = build_model(architecture, downsample).eval()
    sizes = (64, 96) if architecture == "compact" else (64,)
    for r in sizes:  # 96 px: the last FLC sees 6 -> 3 (odd half length)
        x = torch.randn(2, 1, r, r)
        with torch.no_grad():
            feats = model.features(x)
            logits, cam, embedding = model.forward_explained(x)
        assert feats.shape[-2:] == (r // 32, r // 32)
        assert logits.shape == (2, 1) and cam.shape == (2, r // 32, r // 32)
        assert embedding.shape == (2, model.embedding_size) == (2, feats.shape[1])
        assert torch.allclose(embedding, feats.mean(dim=(2, 3)))
    assert isinstance(model.target_layer, nn.ReLU) and not model.target_layer.inplace
    assert model.target_layer is list(model.features.children())[-1]
    assert model.features.conv0.in_channels == 1


def test_state_dict_keys_shared_across_downsamples() -> None:
    keys = {ds: list(build_model("compact", ds).state_dict()) for ds in DOWNSAMPLES}
    assert all(k == keys["standard"] for k in keys.values())
    model = build_model("compact", "flc", num_classes=3)
    clone = build_model(**model.config())
    clone.load_state_dict(model.state_dict(), strict=True)
    assert model.config() == {"architecture": "compact", "downsample": "flc", "num_classes": 3}
    assert all(type(v) is str for k, v in model.config().items() if k != "num_classes")


def test_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match="architecture"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="downsample"):
        build_model("compact", "maxpool")
    with pytest.raises(IndexError):
        build_model("compact").forward_explained(torch.zeros(1, 1, 64, 64), class_index=1)


@pytest.mark.parametrize("downsample", DOWNSAMPLES)
def test_forward_explained_cam_equals_pytorch_grad_cam(downsample: str) -> None:
    model = randomise(build_model("compact", downsample, num_classes=3), seed=1)
    x = torch.randn(3, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    for class_index in (0, 2):
        with torch.no_grad():
            logits, cam, _ = model.forward_explained(x, class_index)
            assert torch.allclose(logits, model(x), atol=1e-6)
        assert cam.min() >= 0 and cam.amax(dim=(1, 2)).min() > 0
        ours = normalise_cam(cam.numpy())
        reference = gradcam_at_grid(model, x, class_index)
        assert np.abs(ours - reference).max() <= 1e-4


def test_gradient_checkpointing_same_outputs_and_gradients(monkeypatch: Any) -> None:
    model = randomise(build_model("compact", "blurpool"), seed=3).train()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_out, plain_grads = run()
    calls = []
    checkpoint = torchvision.models.densenet.cp.checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torchvision.models.densenet.cp, "checkpoint", counting)
    model.set_gradient_checkpointing(True)
    ckpt_out, ckpt_grads = run()
    assert len(calls) == 8  # every dense layer of the compact model (2 x 4)
    assert torch.allclose(plain_out, ckpt_out, atol=1e-6)
    assert len(plain_grads) == len(ckpt_grads)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    model.set_gradient_checkpointing(False)
    run()
    assert len(calls) == 8  # switched off: no further checkpoint calls


@pytest.fixture(scope="module")
def imagenet_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A fake torchvision ImageNet DenseNet-121 state dict saved to a local file."""
    torch.manual_seed(5)
    state = torchvision.models.densenet121(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "densenet121-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_sums_rgb_stem_and_drops_classifier(
    imagenet_state: tuple[Path, dict[str, Any]],
) -> None:
    path, state = imagenet_state
    model = build_model("densenet121", "asap", pretrained=path)
    conv0 = state["features.conv0.weight"]
    assert conv0.shape[1] == 3
    assert torch.allclose(model.features.conv0.weight, conv0.sum(dim=1, keepdim=True))
    key = "denseblock3.denselayer7.conv2.weight"
    assert torch.equal(model.features.state_dict()[key], state[f"features.{key}"])
    assert torch.equal(model.features.norm5.running_var, state["features.norm5.running_var"])
    assert model.classifier.weight.shape == (1, 1024)


def test_pretrained_accepts_legacy_keys_and_rejects_mismatch(
    imagenet_state: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = imagenet_state
    legacy = {
        k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = build_model("densenet121", pretrained=path)
    key = "denseblock1.denselayer1.norm1.weight"
    assert torch.equal(model.features.state_dict()[key], state[f"features.{key}"])
    with pytest.raises((ValueError, RuntimeError)):
        build_model("compact", pretrained=path)
