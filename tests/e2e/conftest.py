"""A real service: ``python -m service`` in a subprocess, uvicorn on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# the viewer's browser fixtures (a real Chromium), for any end-to-end module
from tests.e2e.browser import browser, viewer_tab  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running service process; ``log`` is its stderr (JSON lines)."""

    def __init__(
        self,
        models: Path,
        log_path: Path,
        *,
        python: str = sys.executable,
        cwd: Path = REPO,
        **settings: str,
    ) -> None:
        """``python -m service`` in ``cwd``: this interpreter and the repository by default;
        another virtual environment's interpreter, outside the repository, to serve from
        an installed wheel (tests/deploy/test_serving_install.py)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARPCXR_")}
        env.update({
            "SHARPCXR_MODELS_DIR": str(models),
            "SHARPCXR_LOG_LEVEL": "DEBUG",
            "SHARPCXR_DATA_DIR": str(log_path.parent / "data"),
        })  # fmt: skip
        env.update({f"SHARPCXR_{k.upper()}": v for k, v in settings.items()})
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [python, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(timeout_s=180)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited at start-up:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"service not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(
        models_dir, tmp_path_factory.mktemp("onnx") / "service.log", default_resolution="256"
    )
    yield s
    s.stop()
