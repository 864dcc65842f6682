"""The ``sharpcxr`` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIIM_FILE, make_dicom

REPO = Path(__file__).resolve().parents[1]


def sharpcxr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sharpcxr.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_inspect_prints_facts_and_writes_the_model_input(tmp_path: Path) -> None:
    out = tmp_path / "input.png"
    result = sharpcxr("inspect", str(SIIM_FILE), "--resolution", "256", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["header"]["rows"] == 1024
    assert report["header"]["photometric_interpretation"] == "MONOCHROME2"
    assert report["model_input"]["resolution"] == 256
    image = np.asarray(Image.open(out))
    assert image.shape == (256, 256) and image.dtype == np.uint8
    assert image.std() > 10


def test_inspect_never_prints_patient_identifiers(tmp_path: Path) -> None:
    path = tmp_path / "phi.dcm"
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path.write_bytes(make_dicom(pixels, PatientName="Secret^Person", PatientID="MRN-424242"))
    result = sharpcxr("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "Secret" not in result.stdout + result.stderr
    assert "424242" not in result.stdout + result.stderr


def test_inspect_refusals_exit_1_with_one_line(tmp_path: Path) -> None:
    cases = {
        "random.dcm": np.random.default_rng(0).bytes(2048),
        "truncated.dcm": SIIM_FILE.read_bytes()[:50_000],
    }
    pixels = np.zeros((8, 8), dtype=np.uint16)
    cases["budget.dcm"] = make_dicom(pixels, Rows=65535, Columns=65535)
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        result = sharpcxr("inspect", str(path))
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sharpcxr inspect: refused"), lines
        assert "Traceback" not in result.stderr
    missing = sharpcxr("inspect", str(tmp_path / "nope.dcm"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_phantoms_then_inspect_end_to_end(tmp_path: Path) -> None:
    import csv

    from imaging.dicom import read_dicom
    from imaging.rle import decode_siim_rle

    out = tmp_path / "ds"
    result = sharpcxr(
        "phantoms", str(out), "--n", "4", "--site", "b", "--size", "256", "--seed", "3",
        "--transfer-syntax", "j2k-lossless",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(out / "train-rle.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and set(rows[0]) == {"ImageId", "EncodedPixels"}
    positives = [r for r in rows if r["EncodedPixels"].strip() != "-1"]
    assert positives, "a 4-image set at the default fraction holds a positive"
    for row in rows:
        path = out / "dicom" / f"{row['ImageId']}.dcm"
        image = read_dicom(path.read_bytes())
        assert image.facts.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
        assert image.facts.photometric_interpretation == "MONOCHROME1"  # site b
        mask = decode_siim_rle(row["EncodedPixels"], image.facts.rows, image.facts.columns)
        if row in positives:
            # The mask lies in the DICOM's own rows x columns grid and is a part of a lung.
            assert 0 < mask.sum() < mask.size / 4
        inspected = sharpcxr("inspect", str(path), "--resolution", "64")
        assert inspected.returncode == 0, inspected.stderr
        assert "PHANTOM" not in inspected.stdout and "SHARPCXR-" not in inspected.stdout


def test_phantoms_rejects_bad_arguments(tmp_path: Path) -> None:
    result = sharpcxr("phantoms", str(tmp_path / "x"), "--transfer-syntax", "htj2k")
    assert result.returncode == 2
    assert "HTJ2K" in result.stderr


def test_inspect_resolution_follows_the_shared_rule(tmp_path: Path) -> None:
    refused = sharpcxr("inspect", str(SIIM_FILE), "--resolution", "100")
    assert refused.returncode == 2
    assert "a multiple of 32 in 32..2048" in refused.stderr and "100" in refused.stderr
    assert sharpcxr("inspect", str(SIIM_FILE), "--resolution", "4096").returncode == 2
    out = tmp_path / "input.png"
    accepted = sharpcxr("inspect", str(SIIM_FILE), "--resolution", "32", "--out", str(out))
    assert accepted.returncode == 0, accepted.stderr
    assert np.asarray(Image.open(out)).shape == (32, 32)


# ``--help`` in a fresh interpreter: it must not import torch or the training loop (7 s),
# and it must stay quick (about 0.8 s here; the bound leaves room for noisy CI machines).
HELP_PROBE = """
import contextlib, io, json, sys
from sharpcxr.cli import main
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        main(sys.argv[1:])
    code = None
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "training.loop", "cxrmodel.networks") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "help": out.getvalue()}))
"""
HELP_BOUND_S = 5.0


@pytest.mark.parametrize(
    "command", ["", "phantoms", "inspect", "train", "export", "study", "serve", "triton-export"]
)
def test_help_imports_no_torch_and_is_quick(command: str) -> None:
    argv = [command, "--help"] if command else ["--help"]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *argv],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"sharpcxr {' '.join(argv)}: {seconds:.2f} s")
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["code"] == 0
    assert probe["heavy"] == [], f"--help imported {probe['heavy']}"
    assert probe["help"].startswith("usage: sharpcxr")
    assert seconds < HELP_BOUND_S, f"sharpcxr {' '.join(argv)} took {seconds:.1f} s"
