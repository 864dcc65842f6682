"""The serving install: base dependencies plus the CPU ONNX Runtime, no torch, serves.

Built the way a user (and the Dockerfile's cpu target) builds it, ``uv sync --frozen
--no-dev --extra cpu``, into a fresh virtual environment outside the repository's
``.venv``; then ``sharpcxr serve`` from that environment answers a predict on the test
models. uv links the wheels from its cache (filled by ``make install``), so this takes
seconds, not a download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, free_port
from tests.service.conftest import phantom, phantom_dicom

REPO = Path(__file__).resolve().parents[2]
# torch, the training stack and the GPU wheel: none of them belongs in the serving install
NOT_SERVING = ("torch", "torchvision", "grad-cam", "optuna", "scikit-learn", "matplotlib",
               "onnx", "onnxscript", "onnxruntime-gpu", "pytest")  # fmt: skip


def _uv() -> list[str]:
    """uv as `make` found it: ``uv run`` exports its own path as ``UV``."""
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    if shutil.which("uv"):
        return ["uv"]
    return [sys.executable, "-m", "uv"]


def _sync(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env["UV_PROJECT_ENVIRONMENT"] = str(venv)
    return subprocess.run(
        [*_uv(), "sync", "--frozen", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _distributions(python: Path) -> set[str]:
    listing = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'].lower() "
         "for d in m.distributions()))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return set(listing.stdout.split())


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("serving") / "venv"
    # --no-editable, as the Dockerfile installs it: a built wheel, so whatever the service
    # needs at run time (the viewer's files, the vendored docs assets) must be in the wheel
    done = _sync(venv, "--no-dev", "--extra", "cpu", "--no-editable")
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def serving(serving_venv: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:  # fmt: skip
    """The serving install's interpreter, run outside the repository (so nothing can come
    from the source tree)."""
    data = tmp_path_factory.mktemp("serving-data")
    server = Server(models_dir, data / "serve.log", python=str(serving_venv / "bin" / "python"),
                    cwd=data)  # fmt: skip
    try:
        yield server.url
    finally:
        server.stop()


def test_the_serving_install_has_no_torch(serving_venv: Path) -> None:
    python = serving_venv / "bin" / "python"
    installed = _distributions(python)
    assert {"onnxruntime", "fastapi", "pydicom", "highdicom", "sharpcxr"} <= installed
    assert sorted(installed & set(NOT_SERVING)) == []
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


def test_the_serving_install_answers_a_predict(serving: str, tmp_path: Path) -> None:
    body = phantom_dicom(phantom(0, size=256))
    r = httpx.post(serving + "/v1/predict?resolution=128", content=body,
                   headers={"Content-Type": "application/dicom"}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()
    assert 0.0 <= answer["probability"] <= 1.0 and answer["model"]["resolution"] == 128
    models = httpx.get(serving + "/v1/models", timeout=10).json()["models"]
    assert {m["backend"] for m in models} == {"onnxruntime:CPUExecutionProvider"}


def test_the_serving_install_is_a_wheel_that_carries_the_viewer(
    serving: str, serving_venv: Path
) -> None:
    """Not the repository on sys.path: the installed package, with its static files."""
    where = subprocess.run(
        [str(serving_venv / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        capture_output=True, text=True, check=True, cwd=serving_venv,
    )  # fmt: skip
    assert str(serving_venv) in where.stdout and str(REPO) not in where.stdout
    for path, needle in (("/viewer/", "<html"), ("/viewer/js/app.js", "import"),
                         ("/docs", "swagger"), ("/redoc", "redoc")):  # fmt: skip
        page = httpx.get(serving + path, timeout=10)
        assert page.status_code == 200 and needle in page.text.lower(), path


def test_the_two_onnxruntime_wheels_are_declared_in_conflict(tmp_path: Path) -> None:
    """uv refuses cpu and gpu together: both wheels would write the same module."""
    done = _sync(tmp_path / "venv", "--no-dev", "--extra", "cpu", "--extra", "gpu", "--dry-run")
    assert done.returncode != 0
    assert "conflict" in done.stderr.lower() and "gpu" in done.stderr


def test_without_an_onnxruntime_extra_serve_says_which_to_install(
    tmp_path: Path, models_dir: Path
) -> None:
    """The bare base install has no inference runtime: one clear line, not a traceback."""
    venv = tmp_path / "venv"
    assert _sync(venv, "--no-dev").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARPCXR_", "VIRTUAL_ENV"))}
    env["SHARPCXR_MODELS_DIR"] = str(models_dir)
    done = subprocess.run(
        [str(venv / "bin" / "sharpcxr"), "serve", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "'onnxruntime', which is not installed" in done.stderr
    assert "sharpcxr[cpu]" in done.stderr and "Traceback" not in done.stderr


def test_training_commands_in_the_serving_install_name_the_train_extra(
    serving_venv: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(serving_venv / "bin" / "sharpcxr"), "train", "--dataset", "phantoms",
         "--data-root", str(tmp_path), "--resolution", "64", "--out-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "needs 'torch'" in done.stderr and "sharpcxr[train]" in done.stderr
    assert "Traceback" not in done.stderr
