"""The serving path imports no training code and no torch.

The service app, with the ONNX Runtime backend loaded and a real request answered, must
run from the base install (no torch wheel, issue #14's dependency layout), so neither
``torch`` nor anything under ``training`` (nor the torch side of ``cxrmodel``) may be
imported on the way. Checked in a fresh interpreter, where nothing else was imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import phantom, phantom_dicom

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "pytorch_grad_cam", "training", "cxrmodel.networks",
             "cxrmodel.checkpoint", "sklearn", "optuna")  # fmt: skip

PROBE = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

models, dicom = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
with TestClient(create_app(Settings(models_dir=models))) as client:
    r = client.post("/v1/predict?resolution=128", content=dicom,
                    headers={"Content-Type": "application/dicom"})
    backends = {m["backend"] for m in client.get("/v1/models").json()["models"]}
print(json.dumps({"status": r.status_code, "backends": sorted(backends),
                  "modules": sorted(sys.modules)}))
"""


def _imported(forbidden: tuple[str, ...], modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_serving_with_onnxruntime_imports_neither_training_nor_torch(
    models_dir: Path, tmp_path: Path
) -> None:
    dicom = tmp_path / "phantom.dcm"
    dicom.write_bytes(phantom_dicom(phantom(0, size=256)))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(models_dir), str(dicom)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 200 and report["backends"] == ["onnxruntime:CPUExecutionProvider"]
    assert "onnxruntime" in report["modules"] and "service.pipeline" in report["modules"]
    assert _imported(FORBIDDEN, report["modules"]) == []


def test_the_probe_would_see_a_forbidden_import() -> None:
    """The check itself can fail: the torch backend's module does import torch."""
    code = "import sys, service.backends.torch; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch" in _imported(FORBIDDEN, done.stdout.split())
