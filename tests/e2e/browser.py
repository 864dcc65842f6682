"""A real Chromium driven by Playwright, for the viewer's end-to-end tests.

Playwright's own browser download cannot run here, so it drives Debian's ``chromium``
(``.ci/run`` installs it where it is missing). Every page records the requests it makes:
:meth:`Page.foreign_requests` lists those that left for another origin than the service.

Screenshots go to ``$SHARPCXR_SCREENSHOTS`` when set (``make screenshots`` points it at
``docs/viewer``), else to the test's temporary directory.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

#: the laptop screen the layout must work on
VIEWPORT = {"width": 1366, "height": 768}


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SHARPCXR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: .ci/run should have installed it")
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Viewer:
    """One browser tab on the viewer of the service at ``base``."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/viewer/") -> None:
        self.page.goto(self.base + path)
        if path.startswith("/viewer"):
            self.page.wait_for_selector("body[data-ready=true]", timeout=30_000)

    def foreign_requests(self) -> list[str]:
        origin = urlsplit(self.base)
        return [
            u for u in self.requests
            if not u.startswith(("data:", "blob:"))
            and (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)
        ]  # fmt: skip

    def upload(self, path: Path, endpoint: str = "/v1/predict") -> Any:
        """Choose ``path`` in the file picker; the service's response to ``endpoint``."""
        with self.page.expect_response(lambda r: urlsplit(r.url).path == endpoint) as info:
            self.page.set_input_files("#file-input", str(path))
        return info.value

    def answer(self, path: Path) -> Any:
        """Open ``path`` and wait until its answer is shown; the service's predict response."""
        response = self.upload(path)
        self.page.wait_for_selector("#answer-body:not([hidden])")
        return response

    def canvas_pixels(self, index: int = 0) -> np.ndarray[Any, Any]:
        """The ``index``-th panel's canvas as uint8 RGBA ``(height, width, 4)``."""
        data = self.page.evaluate(
            """(i) => {
                const c = document.querySelectorAll('.panel canvas')[i];
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
                let s = ''; const b = d.data;
                for (let k = 0; k < b.length; k += 0x8000)
                    s += String.fromCharCode.apply(null, b.subarray(k, k + 0x8000));
                return {w: c.width, h: c.height, data: btoa(s)};
            }""",
            index,
        )
        raw = np.frombuffer(base64.b64decode(data["data"]), np.uint8)
        return raw.reshape(data["h"], data["w"], 4)

    def settle(self) -> None:
        """Wait for pending animation frames (the window is re-rendered in one)."""
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                           "requestAnimationFrame(r)))")  # fmt: skip


@pytest.fixture
def viewer_tab(browser: Any) -> Iterator[Any]:
    """A factory: ``viewer_tab(base_url)`` opens a fresh context (no stored key)."""
    contexts: list[Any] = []
    tabs: list[Viewer] = []

    def make(base: str) -> Viewer:
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        tab = Viewer(page, base)
        page.on("request", lambda r: tab.requests.append(r.url))
        page.on("pageerror", lambda e: tab.errors.append(str(e)))
        # a request the page's CSP blocked never reaches the network log: catch the report
        page.on("console", lambda m: "Content Security Policy" in m.text
                and tab.errors.append(m.text))  # fmt: skip
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        foreign = tab.foreign_requests()
        assert foreign == [], f"the page reached another host: {foreign}"
        assert tab.errors == [], f"script errors on the page: {tab.errors}"
    for context in contexts:
        context.close()
