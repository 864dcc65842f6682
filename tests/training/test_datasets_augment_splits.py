"""Augment (identity at 0, bounded, never flips, deterministic) and patient-level splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training.datasets import Augment, AugmentParams, Record, patient_holdout_split, patient_kfold

R = 64


def asymmetric_image() -> torch.Tensor:
    """(1, R, R) normalised: bright left, bright top, and a bright blob top-left."""
    y, x = torch.meshgrid(torch.linspace(0, 1, R), torch.linspace(0, 1, R), indexing="ij")
    display = 0.2 + 0.35 * (1 - x) + 0.25 * (1 - y)
    display[8:20, 8:20] = 0.95
    return ((display - 0.5) / 0.25).unsqueeze(0)


def test_strength_zero_is_identity() -> None:
    image = asymmetric_image()
    mask = torch.zeros(R, R, dtype=torch.bool)
    mask[5:9, 30:40] = True
    out, out_mask = Augment(strength=0.0).apply(image, mask=mask)
    assert torch.equal(out, image) and out is not image
    assert out_mask is not None and torch.equal(out_mask, mask)


def test_augment_changes_image_keeps_shape_range_and_never_flips() -> None:
    image = asymmetric_image()
    aug = Augment(strength=1.0)
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(200):
        out = aug(image, generator=g)
        assert out.shape == image.shape and out.dtype == torch.float32
        assert float(out.min()) >= -2.0 - 1e-5 and float(out.max()) <= 2.0 + 1e-5
        # rough intensity kept: brightness is at most 0.1 display = 0.4 normalised (the
        # border can turn black where a zoom-out or shift brings in the outside)
        centre = (slice(None), slice(16, 48), slice(16, 48))
        assert abs(float(out[centre].mean() - image[centre].mean())) < 0.5
        changed += int(not torch.allclose(out, image, atol=1e-3))
        left, right = out[0, :, : R // 2].mean(), out[0, :, R // 2 :].mean()
        top, bottom = out[0, : R // 2].mean(), out[0, R // 2 :].mean()
        assert left > right and top > bottom  # no horizontal, no vertical flip
        blob = out[0, 4:24, 4:24].mean()
        assert blob > out[0, 4:24, -24:-4].mean() and blob > out[0, -24:-4, 4:24].mean()
    assert changed == 200


def test_augment_is_deterministic_and_batched() -> None:
    batch = torch.stack([asymmetric_image(), -asymmetric_image()])
    aug = Augment(strength=0.7)
    a = aug(batch, generator=torch.Generator().manual_seed(3))
    b = aug(batch, generator=torch.Generator().manual_seed(3))
    c = aug(batch, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 1, R, R) and torch.equal(a, b) and not torch.equal(a, c)


def test_strength_scales_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    p = Augment(strength=0.5).sample(1000, g)
    assert float(p.angle_deg.abs().max()) <= 3.5 and float(p.angle_deg.abs().max()) > 3.0
    assert float(p.scale.min()) >= 0.95 and float(p.scale.max()) <= 1.05
    assert float(p.brightness.abs().max()) <= 0.05 and float(p.contrast.max()) <= 1.05
    with pytest.raises(ValueError):
        Augment(strength=1.5)


def test_mask_moves_with_the_image_and_padding_stays_black() -> None:
    image = torch.zeros(1, R, R)
    image[:, :, :8] = -2.0  # letterbox padding on the left
    content = torch.ones(R, R, dtype=torch.bool)
    content[:, :8] = False
    mask = torch.zeros(R, R, dtype=torch.bool)
    mask[20:30, 20:30] = True
    shift = 8 / R * 2  # 8 pixels in normalised units
    params = AugmentParams(
        angle_deg=torch.zeros(1), scale=torch.ones(1), translate=torch.tensor([[shift, 0.0]]),
        brightness=torch.tensor([0.1]), contrast=torch.ones(1),
    )  # fmt: skip
    out, out_mask = Augment().apply(image, mask=mask, content=content, params=params)
    assert out_mask is not None
    # input x = output x + shift: the content moves 8 px to the left
    assert torch.equal(out_mask[20:30, 12:22], torch.ones(10, 10, dtype=torch.bool))
    assert int(out_mask.sum()) == 100
    assert torch.allclose(out[0, :, -8:], torch.full((R, 8), -2.0))  # came from outside
    assert torch.allclose(out[0, :, 10:50], torch.full((R, 40), 0.4), atol=1e-5)  # +0.1 display


def test_gamma_is_off_by_default_and_bends_the_tone_curve() -> None:
    assert Augment(strength=0.8).sample(5, torch.Generator().manual_seed(3)).gamma is None
    on = Augment(strength=1.0, gamma=0.7).sample(2000, torch.Generator().manual_seed(3))
    assert on.gamma is not None
    assert float(on.gamma.min()) >= 1 / 1.7 - 1e-6 and float(on.gamma.max()) <= 1.7 + 1e-6
    # Drawn after the others: switching it on leaves every other draw as it was.
    off = Augment(strength=1.0).sample(2000, torch.Generator().manual_seed(3))
    for name in ("angle_deg", "scale", "translate", "brightness", "contrast"):
        assert torch.equal(getattr(on, name), getattr(off, name))
    # display 0.5 with g = 2 -> 0.25 (normalised: (0.25 - 0.5) / 0.25 = -1), identity otherwise.
    params = AugmentParams(
        angle_deg=torch.zeros(1), scale=torch.ones(1), translate=torch.zeros(1, 2),
        brightness=torch.zeros(1), contrast=torch.ones(1), gamma=torch.tensor([2.0]),
    )  # fmt: skip
    out, _ = Augment().apply(torch.zeros(1, R, R), params=params)
    assert torch.allclose(out[0, 8:-8, 8:-8], torch.full((R - 16, R - 16), -1.0), atol=1e-5)
    with pytest.raises(ValueError, match="gamma"):
        Augment(gamma=-0.1)


# ------------------------------------------------------------------------ splits
def make_records(n_patients: int = 120, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        positive = p % 5 == 0
        for k in range(int(rng.integers(1, 5))):
            label = np.array([1.0 if positive and k == 0 else 0.0], np.float32)
            out.append(Record(f"img{p}_{k}", Path(f"/x/{p}_{k}.dcm"), label, f"P{p}"))
    for k in range(6):  # no patient id: each its own patient
        out.append(Record(f"anon{k}", Path(f"/x/a{k}.dcm"), np.array([k % 2], np.float32), None))
    return out


def patients(records: list[Record]) -> set[str]:
    return {r.patient_id or r.image_id for r in records}


def test_holdout_keeps_patients_disjoint_and_stratifies() -> None:
    records = make_records()
    train, hold = patient_holdout_split(records, fraction=0.2, seed=1)
    assert len(train) + len(hold) == len(records)
    assert not patients(train) & patients(hold)
    assert abs(len(hold) / len(records) - 0.2) < 0.03
    pos_all = np.mean([r.labels[0] for r in records])
    pos_hold = np.mean([r.labels[0] for r in hold])
    assert abs(pos_hold - pos_all) < 0.03
    assert patient_holdout_split(records, 0.2, seed=1) == (train, hold)
    assert patient_holdout_split(records, 0.2, seed=2) != (train, hold)
    zero = np.zeros(1, np.float32)
    tiny = [Record(f"t{i}", Path(f"/t/{i}.dcm"), zero, f"T{i}") for i in range(3)]
    assert patient_holdout_split(tiny, 0.1)[1]  # never an empty validation set


def test_kfold_partitions_by_patient_and_stratifies() -> None:
    records = make_records(seed=3)
    folds = patient_kfold(records, k=5, seed=0)
    assert len(folds) == 5
    seen = Counter(r.image_id for _, val in folds for r in val)
    assert set(seen.values()) == {1} and len(seen) == len(records)  # a partition
    positives = sum(r.labels[0] for r in records)
    for train, val in folds:
        assert len(train) + len(val) == len(records)
        assert not patients(train) & patients(val)
        assert abs(len(val) - len(records) / 5) <= 4
        assert abs(sum(r.labels[0] for r in val) - positives / 5) <= 1
    with pytest.raises(ValueError):
        patient_kfold(records[:3], k=5)


def test_multilabel_strata_use_the_rarest_label() -> None:
    rng = np.random.default_rng(0)
    records = []
    for p in range(200):
        labels = np.array([rng.random() < 0.4, p % 20 == 0, np.nan], np.float32)
        records.append(Record(f"i{p}", Path(f"/x/{p}.png"), labels, str(p)))
    for _, val in patient_kfold(records, k=5):
        assert sum(r.labels[1] for r in val) == 2  # the rare label spread evenly


def test_grid_equals_affine_grid() -> None:
    from torch.nn import functional as F  # noqa: N812

    from training.datasets.augment import _grid, _theta

    p = Augment().sample(3, torch.Generator().manual_seed(1))
    theta = _theta(p)
    expected = F.affine_grid(theta, [3, 1, 24, 40], align_corners=False)
    assert torch.allclose(_grid(theta, 40, 24), expected, atol=1e-6)
