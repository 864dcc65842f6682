"""The clinician viewer in a real Chromium against a real service (uvicorn, ONNX Runtime).

What the page shows is checked against what the service answered: the probability read
from the page, the box found in the canvas's pixels where the response's box maps to on
screen, the grey levels equal to the service's display chain, one panel per resolution in
step, the service's own error messages, the not-assessable warning. No request leaves for
another host, no script error happens, axe-core finds no accessibility violation, and the
layout fits a 1366x768 screen. Screenshots: see :mod:`tests.e2e.browser`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from imaging.dicom import read_dicom
from service.pacs.related import encode_related
from tests.conftest import SIIM_FILE, rewrite
from tests.e2e.browser import VIEWPORT, screenshot_dir
from tests.e2e.conftest import Server
from tests.service.conftest import phantom, phantom_dicom

#: the box colour of service/viewer/js/panel.js (BOX_RGB)
BOX_RGB = (255, 64, 255)
KEY = "viewer-test-key"


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(models_dir, tmp_path_factory.mktemp("viewer") / "service.log",
               default_resolution="256")  # fmt: skip
    yield s
    s.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    made = {
        "positive": phantom_dicom(phantom(1, size=1024)),
        "garbage": b"this is not a DICOM file, just text" * 10,
        "real": SIIM_FILE.read_bytes(),  # a real radiograph: out of distribution here
        "lateral": rewrite("RG1_UNCR.dcm", ViewPosition="LL"),
    }
    for name, data in made.items():
        (folder / f"{name}.dcm").write_bytes(data)
    return {name: folder / f"{name}.dcm" for name in made}


def fit_transform(canvas: tuple[int, int], image: tuple[int, int]) -> tuple[float, float, float]:
    """``(scale, tx, ty)``: the whole image centred in the canvas (``(width, height)`` each)."""
    (w, h), (columns, rows) = canvas, image
    scale = min(w / columns, h / rows)
    return scale, w / 2 - columns / 2 * scale, h / 2 - rows / 2 * scale


def colour_mask(rgba: np.ndarray[Any, Any], rgb: tuple[int, int, int], tol: int = 8) -> Any:
    return np.all(np.abs(rgba[..., :3].astype(int) - np.array(rgb)) <= tol, axis=-1)


def test_a_positive_phantom_shows_its_probability_and_the_box_where_the_response_puts_it(
    server: Server, viewer_tab: Any, files: dict[str, Path], tmp_path: Path
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    body = tab.answer(files["positive"]).json()
    tab.page.wait_for_function("document.querySelector('.panel-head').textContent.length > 0")
    tab.settle()
    assert body["positive"] is True and body["boxes"], "the phantom should be a clear positive"
    assert f"{body['probability'] * 100:.1f} %" in tab.page.inner_text("#probability")
    assert "positive" in tab.page.inner_text("#decision")
    card = tab.page.locator("#model-card")
    assert body["model"]["intended_use"] in card.inner_text()
    # read in full: not clipped, not overflowing (inner_text alone would not tell)
    assert card.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight")
    assert card.bounding_box()["x"] + card.bounding_box()["width"] <= VIEWPORT["width"]
    tab.page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer-single.png"))

    pixels = tab.canvas_pixels()
    height, width = pixels.shape[:2]
    image = body["image"]
    scale, tx, ty = fit_transform((width, height), (image["columns"], image["rows"]))
    box = body["boxes"][0]
    # the stroke (2 px) is centred on the box's outer pixel edges
    want = (
        round(tx + box["x_min"] * scale) - 1,
        round(ty + box["y_min"] * scale) - 1,
        round(tx + (box["x_max"] + 1) * scale),
        round(ty + (box["y_max"] + 1) * scale),
    )
    on = colour_mask(pixels, BOX_RGB)
    ys, xs = np.nonzero(on)
    assert len(xs) > 0, "no box drawn"
    if len(body["boxes"]) == 1:
        got = (xs.min(), ys.min(), xs.max(), ys.max())
        assert np.abs(np.array(got) - np.array(want)).max() <= 2, (got, want)
    # every edge of the first box is a drawn line along its whole length
    # (an edge on the canvas border is half drawn: its inner pixel row or column is there)
    x0, y0, x1, y1 = (max(0, want[0]), max(0, want[1]), min(width - 1, want[2]),
                      min(height - 1, want[3]))  # fmt: skip
    for edge in (
        on[y0 : y0 + 2, x0 + 2 : x1 - 1],
        on[y1 - 1 : y1 + 1, x0 + 2 : x1 - 1],
        on[y0 + 2 : y1 - 1, x0 : x0 + 2].T,
        on[y0 + 2 : y1 - 1, x1 - 1 : x1 + 1].T,
    ):
        assert edge.size and edge.any(axis=0).mean() > 0.98, (want, (width, height))  # fmt: skip


def test_the_canvas_shows_the_service_display_chain_pixel_for_pixel(
    server: Server, viewer_tab: Any, files: dict[str, Path]
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    tab.answer(files["positive"])
    for key in ("h", "m", "b", "+", "+"):  # overlays off; zoom past 1:1 (no smoothing)
        tab.page.keyboard.press(key)
    tab.settle()
    pixels = tab.canvas_pixels()
    height, width = pixels.shape[:2]
    expected = read_dicom(files["positive"].read_bytes()).pixels
    rows, columns = expected.shape
    scale, _, _ = fit_transform((width, height), (columns, rows))
    scale *= 1.25 * 1.25
    assert scale >= 1
    # zoomed about the canvas centre, which stays on the image centre
    tx, ty = width / 2 - columns / 2 * scale, height / 2 - rows / 2 * scale
    ys, xs = np.mgrid[40 : height - 40 : 17, 40 : width - 40 : 23]
    r = np.floor((ys + 0.5 - ty) / scale).astype(int)
    c = np.floor((xs + 0.5 - tx) / scale).astype(int)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < columns)
    codes = np.rint(expected[r[inside], c[inside]] * 65535) / 65535
    want = np.rint(codes * 255)
    got = pixels[ys[inside], xs[inside], 0].astype(float)
    assert inside.sum() > 500
    assert np.abs(got - want).max() <= 1
    assert (pixels[ys[inside], xs[inside], 0] == pixels[ys[inside], xs[inside], 2]).all()


def test_compare_shows_one_panel_per_resolution_kept_in_step(
    server: Server, viewer_tab: Any, files: dict[str, Path], tmp_path: Path
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    tab.answer(files["positive"])
    with tab.page.expect_response(lambda r: "/v1/compare" in r.url) as info:
        tab.page.keyboard.press("c")
    results = info.value.json()["results"]
    models = httpx.get(server.url + "/v1/models").json()["models"]
    assert len(results) == len(models) >= 2
    tab.page.wait_for_function(f"document.querySelectorAll('.panel').length === {len(results)}")
    tab.page.wait_for_function("[...document.querySelectorAll('.panel-head')]"
                               ".every(h => h.textContent.includes('server'))")  # fmt: skip
    heads = tab.page.locator(".panel-head").all_inner_texts()
    for head, result in zip(heads, results, strict=True):
        assert f"{result['model']['resolution']} px" in head
        assert f"server {result['timings_ms']['total']:.0f} ms" in head
        assert f"{result['probability'] * 100:.1f} %" in head
    tab.settle()
    tab.page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer-compare.png"))

    for key in ("h", "m", "b"):  # the image alone: the panels must then be identical
        tab.page.keyboard.press(key)
    tab.settle()
    before = [tab.canvas_pixels(i) for i in range(len(results))]
    assert all(np.array_equal(before[0], p) for p in before[1:])
    canvas = tab.page.locator(".panel canvas").first
    box = canvas.bounding_box()
    tab.page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    tab.page.mouse.wheel(0, -300)
    tab.page.mouse.down()
    tab.page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=5)
    tab.page.mouse.up()
    tab.settle()
    after = [tab.canvas_pixels(i) for i in range(len(results))]
    assert not np.array_equal(before[0], after[0]), "zoom and pan changed nothing"
    assert all(np.array_equal(after[0], p) for p in after[1:]), "panels out of step"


def test_a_bad_file_shows_the_service_message(
    server: Server, viewer_tab: Any, files: dict[str, Path]
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    response = tab.upload(files["garbage"])
    assert response.status == 400
    error = response.json()["error"]
    tab.page.wait_for_selector("#error:not([hidden])")
    shown = tab.page.inner_text("#error")
    assert error["message"] in shown and error["code"] in shown
    assert tab.page.locator(".panel").count() == 0


def test_a_real_radiograph_is_shown_as_not_assessable(
    server: Server, viewer_tab: Any, files: dict[str, Path], tmp_path: Path
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    body = tab.upload(files["real"]).json()
    assert body["assessment"]["status"] == "not_assessable"
    banner = tab.page.locator("#trust-banner")
    banner.wait_for(state="visible")
    text = banner.inner_text()
    assert "Not assessable" in text
    for reason in body["assessment"]["reasons"]:
        assert reason["code"] in text and reason["message"] in text
    assert "not assessable" in tab.page.inner_text("#decision")
    assert "for reference only" in tab.page.inner_text("#probability")
    # the warning comes first: above the image
    assert banner.bounding_box()["y"] < tab.page.locator(".panel canvas").bounding_box()["y"]
    tab.settle()
    tab.page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer-not-assessable.png"))


def test_a_refused_image_shows_the_refusal_and_still_the_image(
    server: Server, viewer_tab: Any, files: dict[str, Path]
) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    response = tab.upload(files["lateral"])
    assert response.status == 422
    tab.page.wait_for_selector("#error:not([hidden])")
    assert response.json()["error"]["message"] in tab.page.inner_text("#error")
    tab.page.wait_for_selector(".panel canvas")
    tab.settle()
    pixels = tab.canvas_pixels()
    assert pixels[..., 0].std() > 10, "the image itself should still be shown"


def test_layout_fits_a_laptop_screen_and_passes_axe(
    server: Server, viewer_tab: Any, files: dict[str, Path]
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    tab = viewer_tab(server.url)
    tab.open()
    tab.answer(files["real"])
    size = tab.page.evaluate("() => [document.documentElement.scrollWidth, "
                             "document.documentElement.scrollHeight]")  # fmt: skip
    assert size[0] <= VIEWPORT["width"] and size[1] <= VIEWPORT["height"]
    for selector in (
        "#model-card",
        "#decision",
        "#probability",
        ".panel canvas",
        "#trust-banner",
        ".left .hint",
        "#window-width",
        "#heat-opacity",
    ):
        b = tab.page.locator(selector).first.bounding_box()
        assert b is not None and b["x"] >= 0 and b["x"] + b["width"] <= VIEWPORT["width"]
        assert b["y"] >= 0 and b["y"] + b["height"] <= VIEWPORT["height"], selector  # fmt: skip
    results = Axe().run(tab.page)
    assert results.violations_count == 0, results.generate_report()


def test_keyboard_shortcuts(server: Server, viewer_tab: Any, files: dict[str, Path]) -> None:
    tab = viewer_tab(server.url)
    tab.open()
    tab.answer(files["positive"])
    tab.page.keyboard.press("b")
    assert not tab.page.is_checked("#show-boxes")
    tab.page.keyboard.press("m")
    assert not tab.page.is_checked("#show-mask")
    tab.page.keyboard.press("h")
    assert tab.page.input_value("#heat-opacity") == "0"
    tab.page.fill("#window-width", "0.3")  # the slider keeps the focus: letters still act
    tab.page.keyboard.press("a")
    assert float(tab.page.input_value("#window-width")) == 1.0
    tab.page.keyboard.press("?")
    assert tab.page.locator("#help").is_visible()


def test_docs_and_redoc_load_without_another_host(server: Server, viewer_tab: Any) -> None:
    tab = viewer_tab(server.url)
    tab.open("/docs")
    tab.page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "sharpcxr" in tab.page.inner_text(".swagger-ui .info .title")
    tab.page.get_by_text("/v1/display", exact=True).first.wait_for()
    tab.open("/redoc")
    tab.page.get_by_text("/v1/predict", exact=True).first.wait_for(timeout=30_000)


def test_the_api_key_is_asked_for_and_kept_for_the_tab_only(
    models_dir: Path, tmp_path: Path, viewer_tab: Any, files: dict[str, Path]
) -> None:
    s = Server(models_dir, tmp_path / "service.log", default_resolution="256", api_keys=KEY)
    try:
        tab = viewer_tab(s.url)
        tab.open()
        tab.page.wait_for_selector("#error:not([hidden])")
        assert "API key" in tab.page.inner_text("#error")
        tab.page.fill("#api-key", KEY)
        tab.page.click("#key-form button")
        tab.page.wait_for_selector("#resolution option", state="attached")
        response = tab.upload(files["positive"])
        assert response.status == 200
        stored = tab.page.evaluate("() => [sessionStorage.getItem('sharpcxr.apiKey'), "
                                   "localStorage.length, document.cookie]")  # fmt: skip
        assert stored == [KEY, 0, ""]
        fresh = viewer_tab(s.url)  # another context: nothing carried over
        fresh.open()
        fresh.page.wait_for_selector("#error:not([hidden])")
        assert fresh.page.evaluate("() => sessionStorage.length") == 0
    finally:
        s.stop()


def test_the_worklist_lists_received_instances_and_opens_them(
    server: Server, viewer_tab: Any, tmp_path: Path
) -> None:
    data = phantom_dicom(phantom(2, size=768))
    content_type, body = encode_related([data])
    stored = httpx.post(server.url + "/dicomweb/studies", content=body,
                        headers={"Content-Type": content_type}, timeout=60)  # fmt: skip
    assert stored.status_code == 200, stored.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        jobs = httpx.get(server.url + "/v1/jobs").json()["jobs"]
        if jobs and jobs[0]["state"] == "done":
            break
        time.sleep(0.5)
    job = jobs[0]
    assert job["state"] == "done" and job["has_image"]
    tab = viewer_tab(server.url)
    tab.open()
    row = tab.page.locator(f"#worklist tr[data-job='{job['job_id']}']")
    row.wait_for()
    assert f"{job['probability'] * 100:.0f} %" in row.inner_text()
    with tab.page.expect_response(lambda r: r.url.endswith("/display")):
        row.click()
    tab.page.wait_for_selector("#answer-body:not([hidden])")
    assert f"{job['probability'] * 100:.1f} %" in tab.page.inner_text("#probability")
    tab.settle()
    assert tab.canvas_pixels()[..., 0].std() > 10
    tab.page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer-worklist.png"))


#: the first predict and display answers reach the page late (the page's own fetch, wrapped)
DELAY_FIRST = """
const realFetch = window.fetch.bind(window);
const delayed = new Set();
window.fetch = async (url, init) => {
  const response = await realFetch(url, init);
  const kind = String(url).split("?")[0];
  if ((kind.endsWith("/v1/predict") || kind.endsWith("/v1/display")) && !delayed.has(kind)) {
    delayed.add(kind);
    await new Promise((done) => setTimeout(done, 2500));
  }
  return response;
};
"""


def test_a_late_answer_never_replaces_a_newer_study(
    server: Server, viewer_tab: Any, files: dict[str, Path]
) -> None:
    tab = viewer_tab(server.url)
    tab.page.add_init_script(DELAY_FIRST)
    tab.open()
    tab.page.fill("#window-width", "0.3")
    tab.page.set_input_files("#file-input", str(files["positive"]))  # answered late
    time.sleep(0.3)
    tab.page.set_input_files("#file-input", str(files["real"]))  # opened second, answered first
    real = httpx.post(server.url + "/v1/predict", content=files["real"].read_bytes(),
                      headers={"Content-Type": "application/dicom"}, timeout=60).json()  # fmt: skip
    tab.page.wait_for_selector("#trust-banner:not([hidden])")
    time.sleep(3.5)  # the first study's answers have arrived by now
    assert "not assessable" in tab.page.inner_text("#decision")
    assert f"{real['probability'] * 100:.1f} %" in tab.page.inner_text("#probability")
    size = f"{real['image']['columns']} × {real['image']['rows']} px"
    assert size in tab.page.inner_text("#image-facts")
    # and the new image opened as assessed, whatever the window was before
    assert float(tab.page.input_value("#window-width")) == 1.0
