"""The gate and the model's own OOD score, end to end against real servers.

Every decodable single-frame grayscale file in pydicom and pydicom-data that is not a
frontal chest radiograph, plus headers written into a real chest radiograph (lateral,
DX "For Processing", constant pixels): a 422 with the gate's code under the default
``SHARPCXR_GATE=refuse``, a 200 with ``not_assessable`` and the code under ``flag``.
Real chest radiographs (SIIM-ACR, WG-04 RG1, the missed-window DX) are 200 and out of
distribution for the phantom-trained models; fresh site-a phantoms are in distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.phantoms.dataset import write_phantom_dataset
from tests.conftest import (
    DX_FOR_PRESENTATION,
    FAKE_MONO1_FILE,
    SIIM_FILE,
    pydicom_file,
    rewrite,
    rg1_as_16bit_dx_with_a_missed_window,
)
from tests.e2e.conftest import Server
from tests.service.conftest import PATIENT_ID, PATIENT_NAME

DICOM = {"Content-Type": "application/dicom"}
SECRETS = {"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID}

#: real file -> the gate codes its header and pixels call for (the first is the 422's)
REAL_NOT_ASSESSABLE: dict[str, list[str]] = {
    **{name: ["unsupported_modality"] for name in (
        "CT_small.dcm", "693_UNCR.dcm", "693_J2KR.dcm", "693_J2KI.dcm",  # CT
        "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm", "MR2_UNCR.dcm", "MR2_J2KI.dcm",  # MR
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # US, grayscale
        "mlut_18.dcm", "vlut_04.dcm", "image_dfl.dcm",  # OT (secondary capture)
    )},
    "J2K_pixelrep_mismatch.dcm": ["unsupported_modality", "not_chest"],  # CT HEAD
    "explicit_VR-UN.dcm": ["unsupported_modality", "not_chest"],  # CT PANCREAS
    "bad_sequence.dcm": ["unsupported_modality", "not_chest"],  # CT NECK
    "MR-SIEMENS-DICOM-WithOverlays.dcm": ["unsupported_modality", "not_chest"],  # ABDOMEN
    "JPGExtended.dcm": ["unsupported_modality", "not_chest"],  # NM WHOLE BODY
    "JPEG-lossy.dcm": ["unsupported_modality", "not_chest"],
    # NM shown over its full 16-bit stored range: no contrast left either
    "JPEG2000.dcm": ["unsupported_modality", "not_chest", "blank_image"],
    "JPEG-LL.dcm": ["unsupported_modality", "not_chest", "blank_image"],
    "rtdose_1frame.dcm": ["unsupported_modality", "blank_image"],
    "RG3_UNCR.dcm": ["not_chest"],  # CR EXTREMITY: a real radiograph, not a chest
    "RG3_J2KR.dcm": ["not_chest"],
}  # fmt: skip


def _constant_rg1() -> bytes:
    shape = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array.shape
    return rewrite("RG1_UNCR.dcm", pixels=np.full(shape, 12000, np.uint16), **SECRETS)


#: headers (and pixels) written into the real RG1 chest -> the codes they call for
WRITTEN_NOT_ASSESSABLE: dict[str, tuple[Callable[[], bytes], list[str]]] = {
    "lateral": (lambda: rewrite("RG1_UNCR.dcm", ViewPosition="LL", **SECRETS), ["lateral_view"]),
    "dx-for-processing": (
        lambda: rewrite("RG1_UNCR.dcm", Modality="DX", SOPClassUID=DX_FOR_PRESENTATION,
                        PresentationIntentType="FOR PROCESSING", **SECRETS),
        ["not_for_presentation"],
    ),
    "hip": (lambda: rewrite("RG1_UNCR.dcm", BodyPartExamined="HIP", **SECRETS), ["not_chest"]),
    "constant-pixels": (_constant_rg1, ["blank_image"]),
}  # fmt: skip

REAL_CHESTS: dict[str, Callable[[], bytes]] = {
    "siim-acr": SIIM_FILE.read_bytes,
    "siim-acr-monochrome1": FAKE_MONO1_FILE.read_bytes,
    "RG1_UNCR": lambda: pydicom_file("RG1_UNCR.dcm"),
    "RG1_J2KR": lambda: pydicom_file("RG1_J2KR.dcm"),
    "RG1_J2KI": lambda: pydicom_file("RG1_J2KI.dcm"),
    "dx-missed-window": lambda: rg1_as_16bit_dx_with_a_missed_window()[0],
}


def _all_not_assessable() -> dict[str, tuple[Callable[[], bytes], list[str]]]:
    real = {
        name: (partial(pydicom_file, name), codes) for name, codes in REAL_NOT_ASSESSABLE.items()
    }
    return {**real, **WRITTEN_NOT_ASSESSABLE}


def post(server: Server, data: bytes, query: str = "?resolution=128") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict{query}", content=data, headers=DICOM, timeout=60)


@pytest.fixture(scope="module")
def flag_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(models_dir, tmp_path_factory.mktemp("flag") / "service.log", gate="flag")
    yield s
    s.stop()


CASES = _all_not_assessable()


@pytest.mark.parametrize("name", list(CASES))
def test_refuse_mode_gives_422_with_the_gate_code(server: Server, name: str) -> None:
    make, codes = CASES[name]
    r = post(server, make())
    assert r.status_code == 422, (name, r.text)
    error = r.json()["error"]
    assert error["code"] == codes[0], (name, error)
    assert PATIENT_ID not in r.text and PATIENT_NAME.split("^")[0] not in r.text


@pytest.mark.parametrize("name", list(CASES))
def test_flag_mode_gives_200_not_assessable_with_the_codes(flag_server: Server, name: str) -> None:
    make, codes = CASES[name]
    r = post(flag_server, make(), "?resolution=128&mask_format=rle")
    assert r.status_code == 200, (name, r.text)
    body = r.json()
    assert body["assessment"]["status"] == "not_assessable" and body["positive"] is None
    got = [reason["code"] for reason in body["assessment"]["reasons"]]
    assert got[: len(codes)] == codes, (name, got)  # the gate's, then perhaps OOD
    assert set(got) - set(codes) <= {"out_of_distribution"}, (name, got)
    mask = body["saliency"]["mask"]  # still explained: the viewer shows it, labelled
    assert sum(mask["counts"]) == mask["rows"] * mask["columns"]


@pytest.mark.parametrize("name", list(REAL_CHESTS))
def test_real_chest_radiographs_are_out_of_distribution(server: Server, name: str) -> None:
    """They pass every header check, and the phantom-trained models say the honest
    thing: this is nothing like what they were trained on."""
    for resolution in (128, 256):
        r = post(server, REAL_CHESTS[name](), f"?resolution={resolution}")
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        assert body["ood"]["in_distribution"] is False, (name, resolution, body["ood"])
        assert body["ood"]["score"] > body["ood"]["threshold"]
        assert body["assessment"]["status"] == "not_assessable" and body["positive"] is None
        assert [x["code"] for x in body["assessment"]["reasons"]] == ["out_of_distribution"]


def test_the_missed_window_falls_back_to_the_stored_range(server: Server) -> None:
    body = post(server, rg1_as_16bit_dx_with_a_missed_window()[0]).json()
    assert "window" in body["image"]["voi_fallback"]  # the header facts say what was done


def test_fresh_site_a_phantoms_are_in_distribution(
    server: Server, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """At least 95% of fresh site-a phantoms (new seed, written as the training set was)
    are in distribution; site b (other acquisition) is reported beside it."""
    rates = {}
    for site in ("a", "b"):
        root = tmp_path / site
        write_phantom_dataset(root, 40, site=site, size=512, seed=4242)
        flags = []
        for path in sorted((root / "dicom").glob("*.dcm")):
            for resolution in (128, 256):
                body = post(server, path.read_bytes(), f"?resolution={resolution}").json()
                flags.append(body["ood"]["in_distribution"])
        rates[site] = float(np.mean(flags))
    record_property("in_distribution_rates", rates)
    print(f"in-distribution rate: site a {rates['a']:.1%}, site b {rates['b']:.1%}")
    assert rates["a"] >= 0.95, rates
    assert rates["b"] < rates["a"]
