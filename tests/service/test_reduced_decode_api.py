"""JPEG 2000 decoded at the wavelet level the model needs, through the service.

The answer must not change in kind: masks and boxes stay in the original grid, the image
block reports the header's size, the probability stays close to the full decode's, and
the viewer's display pixels are still the full image.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imaging.saliency import decode_mask_png
from tests.service.conftest import make_client, phantom, phantom_dicom

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def j2k_body() -> bytes:
    return phantom_dicom(phantom(0, size=1024), transfer_syntax=J2K_LOSSLESS)


@pytest.fixture(scope="module")
def clients(models_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """The default (``accurate``) and ``off``."""
    with make_client(models_dir) as reduced, make_client(models_dir, reduced_decode="off") as full:
        yield reduced, full


@pytest.fixture(scope="module")
def fast(models_dir: Path) -> Iterator[TestClient]:
    with make_client(models_dir, reduced_decode="fast") as client:
        yield client


def _predict(client: TestClient, body: bytes, resolution: int) -> dict:  # type: ignore[type-arg]
    r = client.post(f"/v1/predict?resolution={resolution}", content=body, headers=DICOM)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("resolution", [128, 256])
def test_reduced_and_full_decode_give_the_same_answer_in_the_original_grid(
    clients: tuple[TestClient, TestClient], j2k_body: bytes, resolution: int
) -> None:
    reduced_client, full_client = clients
    reduced = _predict(reduced_client, j2k_body, resolution)
    full = _predict(full_client, j2k_body, resolution)
    assert reduced["image"]["rows"] == full["image"]["rows"] == 1024
    # accurate: 1024 px decoded no finer than 2R: 2x short at 256, 4x at 128; off: 1
    assert reduced["image"]["decode_reduction"] == 512 // resolution
    assert full["image"]["decode_reduction"] == 1
    assert abs(reduced["probability"] - full["probability"]) < 0.02
    mask_r = decode_mask_png(base64.b64decode(reduced["saliency"]["mask"]["data"]))
    mask_f = decode_mask_png(base64.b64decode(full["saliency"]["mask"]["data"]))
    assert mask_r.shape == mask_f.shape == (1024, 1024)
    union = np.logical_or(mask_r, mask_f).sum()
    assert union == 0 or np.logical_and(mask_r, mask_f).sum() / union > 0.9


@pytest.mark.parametrize("resolution", [128, 256])
def test_fast_decodes_to_the_model_resolution_and_says_so(
    fast: TestClient, clients: tuple[TestClient, TestClient], j2k_body: bytes, resolution: int
) -> None:
    """``fast`` goes one level further: 4x at 256, 8x at 128. The answer moves more (the
    wavelet low-pass is sharper than area averaging): these small test models' probability
    by up to ~0.07 at 256 on this phantom, which is why ``accurate`` is the default."""
    quick = _predict(fast, j2k_body, resolution)
    full = _predict(clients[1], j2k_body, resolution)
    assert quick["image"]["decode_reduction"] == 1024 // resolution
    assert abs(quick["probability"] - full["probability"]) < 0.15


def test_a_heatmap_over_a_reduced_decode_is_drawn_on_the_original_grid(
    clients: tuple[TestClient, TestClient], j2k_body: bytes
) -> None:
    reduced_client, _ = clients
    r = reduced_client.post("/v1/predict?resolution=128&heatmap=true", content=j2k_body,
                            headers=DICOM)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["decode_reduction"] == 4
    heatmap = body["saliency"]["heatmap"]
    assert (heatmap["rows"], heatmap["columns"]) == (1024, 1024)


def test_the_display_pixels_stay_the_full_image(
    clients: tuple[TestClient, TestClient], j2k_body: bytes
) -> None:
    reduced_client, _ = clients
    r = reduced_client.post("/v1/display", content=j2k_body, headers=DICOM)
    assert r.status_code == 200
    assert (r.headers["X-Image-Rows"], r.headers["X-Image-Columns"]) == ("1024", "1024")
    assert len(r.content) == 1024 * 1024 * 2
