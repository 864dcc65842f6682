"""One version number: the package's, the HTTP API's and the changelog's latest entry."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import sharpcxr
from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_package_api_and_changelog_share_one_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", sharpcxr.__version__)
    assert version("sharpcxr") == sharpcxr.__version__  # pyproject reads it (hatch)
    assert create_app(Settings()).version == sharpcxr.__version__
    readme = (REPO / "README.md").read_text()
    changelog = readme[readme.index("## Changelog") :]
    latest = re.search(r"^- (\d+\.\d+\.\d+):", changelog, re.MULTILINE)
    assert latest is not None and latest.group(1) == sharpcxr.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject
