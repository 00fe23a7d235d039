"""The app in a real browser: Playwright driving Debian's Chromium (never a downloaded browser) against the
in-process server of tests/app_server.py. A full-page screenshot is kept in test-artifacts/."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.app_server import AppServer, app_server

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server() -> AppServer:
    return app_server()


@pytest.fixture(scope="module")
def page(server: AppServer):
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        page.wait_for_selector("#text-photo")
        yield page
        browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box and leave it (blur fires the slider's release event)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.blur()


def image_src(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").first.get_attribute("src") or ""


def edit(page, tab: str, photo: Path) -> None:
    page.locator(f"#{tab}-photo input[type=file]").set_input_files(str(photo))
    page.locator(f"#{tab}-photo img[src*='{photo.name}']").wait_for()  # uploaded before the click
    page.locator(f"#{tab}-run").click()


def test_reference_edit_views_video_mesh_and_free_view(page, server):
    open_tab(page, "Reference edit")
    page.get_by_text("Settings").nth(1).click()  # the accordion of this tab (the first is the text tab's)
    set_slider(page, "reference-frames", 8)
    set_slider(page, "reference-mesh-resolution", 32)
    page.locator("#reference-reference input[type=file]").set_input_files(str(server.reference))
    edit(page, "reference", server.photo)

    page.locator("#reference-strip img").wait_for()
    page.locator("#reference-video video").wait_for()
    page.locator("#reference-model canvas").wait_for()
    page.locator("#reference-files").get_by_text(re.compile(r"\.ply")).wait_for()
    page.locator("#reference-timings").get_by_text("mesh").wait_for()

    frontal = image_src(page, "reference-view")
    set_slider(page, "reference-yaw", 30)
    page.wait_for_function(
        "([id, old]) => { const img = document.querySelector(`#${id} img`); return img && img.src !== old; }",
        arg=["reference-view", frontal])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_reference_edit.png"), full_page=True)


def test_text_edit_shows_the_strip(page, server):
    open_tab(page, "Text edit")
    page.get_by_text("Settings").first.click()
    for elem_id, value in [("text-steps", 2), ("text-resolution", 64), ("text-frames", 8),
                           ("text-mesh-resolution", 32)]:
        set_slider(page, elem_id, value)
    page.locator("#text-instruction textarea").fill("make it a bronze statue")
    edit(page, "text", server.photo)
    page.locator("#text-strip img").wait_for()
    page.locator("#text-model canvas").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_text_edit.png"), full_page=True)


def test_photo_without_a_face_shows_a_message(page, server):
    open_tab(page, "Reference edit")
    edit(page, "reference", server.no_face)
    page.get_by_text(re.compile("No (clear )?face found")).first.wait_for()
