"""``load_tests/locustfile.py`` really runs: headless Locust against a real service."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

# not load_tests.locustfile: importing locust would gevent-patch this pytest process
from load_tests.locust_support import env_ints, failure_reason
from tests.e2e.conftest import Server

REPO = Path(__file__).resolve().parents[1]


def test_failure_reasons_are_short_and_stable() -> None:
    overloaded = {"error": {"code": "overloaded", "message": "the queue is full (64 ...)"}}
    assert failure_reason(503, overloaded) == "503 overloaded"
    assert failure_reason(503, None) == "503 no error code"
    assert failure_reason(422, {"error": {"code": "unknown_resolution"}}) == (
        "422 unknown_resolution"
    )
    assert failure_reason(0, None, ConnectionRefusedError("refused")) == (
        "transport error: refused"
    )
    assert failure_reason(200, {"probability": 0.25}) is None
    assert failure_reason(200, {"detail": "?"}) == "200 without a probability"


def test_locust_headless_against_a_real_server(models_dir: Path, tmp_path: Path) -> None:
    server = Server(models_dir, tmp_path / "service.log")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARPCXR_")}
        # a 512 px phantom keeps each request short on a 2-core box; the code path is the
        # same as the default 2048 px one
        env |= {"SHARPCXR_LOCUST_RESOLUTIONS": "128,256", "SHARPCXR_LOCUST_SIZE": "512"}
        done = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "load_tests/locustfile.py", "--headless",
             "-u", "2", "-r", "2", "-t", "8s", "--host", server.url,
             "--csv", str(tmp_path / "locust"), "--only-summary"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "locust_stats.csv").open(newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"predict r=128", "predict r=256", "Aggregated"}
    for name in ("predict r=128", "predict r=256"):
        assert rows[name]["Type"] == "POST"
        assert int(rows[name]["Request Count"]) > 0, rows[name]
        assert int(rows[name]["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    with (tmp_path / "locust_exceptions.csv").open(newline="") as fh:
        assert list(csv.DictReader(fh)) == []  # no task raised


@pytest.mark.parametrize("value", ["", "a,b", "0", "128,-1"])
def test_bad_resolutions_name_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARPCXR_LOCUST_RESOLUTIONS", value)
    with pytest.raises(SystemExit, match="SHARPCXR_LOCUST_RESOLUTIONS"):
        env_ints("SHARPCXR_LOCUST_RESOLUTIONS", "256")


def test_resolutions_default_and_dedupe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARPCXR_LOCUST_RESOLUTIONS", raising=False)
    assert env_ints("SHARPCXR_LOCUST_RESOLUTIONS", "256") == [256]
    monkeypatch.setenv("SHARPCXR_LOCUST_RESOLUTIONS", "256, 128,256")
    assert env_ints("SHARPCXR_LOCUST_RESOLUTIONS", "256") == [256, 128]


def test_a_bad_setting_stops_the_locust_file() -> None:
    env = os.environ | {"SHARPCXR_LOCUST_RESOLUTIONS": "a,b"}
    done = subprocess.run(
        [sys.executable, "-c", "import load_tests.locustfile"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "SHARPCXR_LOCUST_RESOLUTIONS" in done.stderr
