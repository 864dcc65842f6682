"""tools/audit_lock.py: what it audits, and that missing data never reads as a pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_lock", REPO / "tools" / "audit_lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_lock"] = module
    spec.loader.exec_module(module)
    return module


audit_lock = _tool()


def test_every_registry_package_of_the_lock_is_audited_not_the_project() -> None:
    packages = audit_lock.locked_packages(REPO / "uv.lock")
    names = {n for n, _ in packages}
    assert "sharpcxr" not in names  # the project itself is no registry package
    # the serving stack, both ONNX Runtime flavours, the training stack and the dev tools
    assert {"fastapi", "onnxruntime", "onnxruntime-gpu", "torch", "pip-audit"} <= names
    assert len(packages) > 100


def test_layers_never_repeat_a_name() -> None:
    pins = [("a", "1"), ("b", "1"), ("a", "2"), ("a", "3")]
    layers = audit_lock.layers(pins)
    assert sorted(p for layer in layers for p in layer) == sorted(pins)
    for layer in layers:
        assert len({n for n, _ in layer}) == len(layer)


def test_an_exception_needs_a_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# comment\n\nPYSEC-2099-1  the vulnerable parser is never called\n")
    assert audit_lock.read_exceptions(good) == {
        "PYSEC-2099-1": "the vulnerable parser is never called"
    }
    bad = tmp_path / "bad.txt"
    bad.write_text("GHSA-xxxx-yyyy-zzzz\n")
    with pytest.raises(ValueError, match="no reason"):
        audit_lock.read_exceptions(bad)


def test_the_committed_exceptions_file_parses() -> None:
    exceptions = audit_lock.read_exceptions(REPO / "deploy" / "audit-exceptions.txt")
    assert all(reason for reason in exceptions.values())


def test_no_data_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A service that answers nothing (here: one pip-audit does not know) must give exit 2
    and the count, never pip-audit's 'No known vulnerabilities found'."""
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\n[[package]]\nname = "idna"\nversion = "3.10"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
        '[[package]]\nname = "me"\nversion = "0"\nsource = { editable = "." }\n'
    )
    argv = ["--lock", str(lock), "--services", "no-such-service", "--no-latest-json"]
    assert audit_lock.main(argv) == 2
    out = capsys.readouterr().out
    assert "could not be audited: 1 of 1 packages" in out
    assert "FAILED" in out
    assert audit_lock.main([*argv, "--allow-unaudited"]) == 0
    assert "WARNING: passing with unaudited packages" in capsys.readouterr().out
