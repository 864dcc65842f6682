"""Decompression bombs and lying codestreams: refused with the right code, within bounded
memory, while legitimate files of every transfer syntax still decode (issue #16, item 4).

The cases are :func:`benchmarks.bench_bombs.bombs` (the benchmark sends the same bytes to a
real server). Memory is checked in subprocesses under an address-space limit
(``RLIMIT_AS``) far below what each bomb asks for: an unbounded allocation there is a
MemoryError, not a refusal, and fails the test; a control shows the limit does bite.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, HTJ2KLossless

from benchmarks.bench_bombs import Bomb, bombs, deflate_bomb
from imaging.codestreams import check_frame
from imaging.dicom import DEFLATE_MARGIN_BYTES, read_dicom
from imaging.errors import (
    CorruptDicomError,
    DecompressionBombError,
    ImagingError,
    TruncatedDicomError,
)
from tests.conftest import build_dataset, pydicom_file, to_bytes

REPO = Path(__file__).resolve().parents[2]
#: the deflate bomb here inflates to 256 MiB (the benchmark's: 1 GiB)
DEFLATE_GIB = 0.25


def _cases() -> dict[str, Bomb]:
    return {case.name: case for case in bombs(DEFLATE_GIB)}


@pytest.mark.parametrize("name", [case.name for case in bombs(DEFLATE_GIB)])
def test_each_case_is_refused_with_its_code(name: str) -> None:
    case = _cases()[name]
    if case.code is None:
        assert read_dicom(case.data).pixels.shape == (64, 64)
        return
    with pytest.raises(ImagingError) as info:
        read_dicom(case.data)
    assert info.value.code == case.code, info.value.message
    assert "SHARPCXR" not in info.value.message and "Doe" not in info.value.message


def test_the_refusals_say_what_is_wrong() -> None:
    cases = _cases()
    messages = {}
    for name in ("deflate-bomb", "j2k-siz-size", "jpeg-sof-size", "item-length-long"):
        with pytest.raises(ImagingError) as info:
            read_dicom(cases[name].data)
        messages[name] = info.value.message
    assert "inflates to more than 160,777,216 bytes" in messages["deflate-bomb"]
    assert "60,000 x 60,000 pixels, the DICOM header 64 x 64" in messages["j2k-siz-size"]
    assert "JPEG codestream declares 60,000 x 60,000" in messages["jpeg-sof-size"]
    assert "declares 2,147,483,632 bytes but only" in messages["item-length-long"]


# A child process: imports and one normal decode first, then RLIMIT_AS = what it has mapped
# plus HEADROOM, then the case. Prints the outcome as JSON.
_CHILD = r"""
import io, json, resource, sys, warnings
warnings.simplefilter("ignore")
import pydicom
from imaging.dicom import read_dicom
from imaging.errors import ImagingError
case, warm, headroom, max_pixels, unguarded = sys.argv[1:6]
read_dicom(open(warm, "rb").read())
data = open(case, "rb").read()
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
limit = size + int(headroom)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    if unguarded == "1":
        pydicom.dcmread(io.BytesIO(data)).pixel_array
        print(json.dumps({"outcome": "decoded"}))
    else:
        image = read_dicom(data, max_pixels=int(max_pixels))
        print(json.dumps({"outcome": "decoded", "shape": list(image.pixels.shape)}))
except ImagingError as exc:
    print(json.dumps({"outcome": exc.code}))
except MemoryError:
    print(json.dumps({"outcome": "MemoryError"}))
"""
HEADROOM = 160 * 2**20


def _in_limited_child(
    data: bytes, tmp_path: Path, *, max_pixels: int = 4_000_000, unguarded: bool = False
) -> str:
    case, warm = tmp_path / "case.dcm", tmp_path / "warm.dcm"
    case.write_bytes(data)
    warm.write_bytes(_cases()["normal-j2k"].data)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(case), str(warm), str(HEADROOM), str(max_pixels),
         "1" if unguarded else "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return str(json.loads(done.stdout.strip().splitlines()[-1])["outcome"])


@pytest.mark.parametrize(
    "name",
    [
        "deflate-bomb",
        "j2k-siz-size",
        "j2k-siz-tiles",
        "jp2-siz-size",
        "htj2k-siz-size",
        "jpeg-sof-size",
        "jpegls-sof55-size",
        "jpegls-lse-oversize",
        "item-length-long",
        "fragments-200000",
    ],
)
def test_refused_within_a_small_address_space(name: str, tmp_path: Path) -> None:
    """160 MiB of headroom where each bomb asks for 256 MiB (deflate) to 14 GB (SIZ)."""
    case = _cases()[name]
    assert _in_limited_child(case.data, tmp_path) == case.code


def test_the_address_space_limit_does_bite(tmp_path: Path) -> None:
    """Control: bare pydicom inflates the deflate bomb and runs out in the same child."""
    assert _in_limited_child(_cases()["deflate-bomb"].data, tmp_path, unguarded=True) == (
        "MemoryError"
    )


def test_deflate_budget_follows_the_pixel_budget(tmp_path: Path) -> None:
    """The 100 MiB deflated case decodes with the default budget (160 MB) and is refused
    with a budget of 4 Mpx (32 MB), within the limit either way."""
    data = _cases()["deflate-100mb"].data
    assert _in_limited_child(data, tmp_path, max_pixels=4_000_000) == "decompression_bomb"
    with pytest.raises(DecompressionBombError, match="more than 32,777,216 bytes"):
        read_dicom(data, max_pixels=4_000_000)
    assert 4_000_000 * 4 + DEFLATE_MARGIN_BYTES == 32_777_216


def test_trailing_pixel_data_are_neither_decoded_nor_copied_again() -> None:
    """90 MiB past a 64x64 frame: the element value pydicom reads is the only copy (pydicom
    alone decodes all 11,521 whole 'frames' it finds: another 90 MiB)."""
    data = _cases()["uncompressed-trailing-90mb"].data
    tracemalloc.start()
    image = read_dicom(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.pixels.shape == (64, 64)
    assert peak < len(data) + 16 * 2**20


# ---------------------------------------------------------------------------- legit files
def test_legit_deflated_file_decodes_identically() -> None:
    """pydicom-data's image_dfl.dcm: the same pixels as its inflated, uncompressed copy;
    the facts keep the Deflated syntax."""
    data = pydicom_file("image_dfl.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = io.BytesIO()
    ds.save_as(plain, enforce_file_format=True)
    deflated, reference = read_dicom(data), read_dicom(plain.getvalue())
    assert deflated.facts.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert reference.facts.transfer_syntax_uid == ExplicitVRLittleEndian
    np.testing.assert_array_equal(deflated.pixels, reference.pixels)
    assert replace(deflated.facts, transfer_syntax_uid="", transfer_syntax_name="") == replace(
        reference.facts, transfer_syntax_uid="", transfer_syntax_name=""
    )


def test_deflated_without_preamble_and_damaged_streams() -> None:
    data = pydicom_file("image_dfl.dcm")
    assert read_dicom(data[128 + 4 :]).facts.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    with pytest.raises(TruncatedDicomError, match="ends inside its compressed stream"):
        read_dicom(data[: len(data) - 1000])
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 200] = b"\xff" * 200
    with pytest.raises(CorruptDicomError):
        read_dicom(bytes(damaged))


def test_a_deflated_image_within_budget_decodes() -> None:
    ramp = (np.add.outer(np.arange(64), np.arange(80)) * 40 % 4096).astype(np.uint16)
    ds = build_dataset(ramp, transfer_syntax=DeflatedExplicitVRLittleEndian)
    image = read_dicom(to_bytes(ds))
    np.testing.assert_array_equal(image.pixels, read_dicom(to_bytes(build_dataset(ramp))).pixels)
    # the bomb builder's own output, small: decodes too (its pixel data are the declared)
    assert read_dicom(deflate_bomb(64 * 64 * 2)).pixels.shape == (64, 64)


@pytest.mark.parametrize(
    "name",
    [
        "RG1_J2KR.dcm",
        "RG3_J2KI.dcm",
        "MR_small_RLE.dcm",
        "JPEG-LL.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "JPGExtended.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "JPEG2000.dcm",
        "693_J2KI.dcm",
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_legit_files_of_every_syntax_still_decode(name: str) -> None:
    image = read_dicom(pydicom_file(name), min_side=32)
    assert image.grid == (image.facts.rows, image.facts.columns)
    assert np.unique(image.pixels).size >= 8


def test_siim_jpeg_baseline_and_an_htj2k_image_still_decode(siim_bytes: bytes) -> None:
    assert read_dicom(siim_bytes).pixels.shape == (1024, 1024)
    ramp = (np.add.outer(np.arange(96), np.arange(128)) * 30 % 4096).astype(np.uint16)
    ds = build_dataset(ramp, transfer_syntax=HTJ2KLossless)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(imagecodecs.htj2k_encode(ramp, level=0))])
    data = to_bytes(ds)
    assert check_frame(ds.PixelData, HTJ2KLossless, rows=96, columns=128, bits_allocated=16)
    np.testing.assert_array_equal(
        read_dicom(data).pixels, read_dicom(to_bytes(build_dataset(ramp))).pixels
    )


def test_a_panicking_rle_decoder_falls_back_to_the_next_plugin() -> None:
    """pylibjpeg-rle panics (pyo3's PanicException, a BaseException) when a segment offset
    lets segment 1 run into segment 2; pydicom's own RLE decoder is tried next."""
    ds = pydicom.dcmread(io.BytesIO(pydicom_file("MR_small_RLE.dcm")))
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    frame[8:12] = (int.from_bytes(frame[8:12], "little") + 50).to_bytes(4, "little")
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    try:
        image = read_dicom(buffer.getvalue())
    except ImagingError as exc:  # refused is fine too; escaping as a panic is not
        assert exc.code == "corrupt_dicom"
    else:
        assert image.pixels.shape == (64, 64)
