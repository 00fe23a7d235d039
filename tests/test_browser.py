"""The app in a real browser: Playwright driving Debian's Chromium (never a downloaded browser) against the
in-process server of tests/app_server.py, at the app's default settings. Full-page screenshots are kept in
test-artifacts/."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.app_server import AppServer, app_server, serve
from threedpe.gallery import Gallery, RecordNotFound
from threedpe.serving.runner import load_editor
from threedpe.serving.sessions import SessionFiles
from threedpe.ui.gallery import LISTING_REFRESH_S
from threedpe.ui.page import build_demo

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000
# The loss chart of the Customize tab (vega-lite, drawn as SVG): its lines' paths; its legend (where not clipped)
# and its x-axis labels.
LOSS_LINES = """() => Array.from(document.querySelectorAll('#customize-loss svg.marks .mark-line path'))
    .map(path => path.getAttribute('d')).join('|')"""
LOSS_LABELS = """() => {
    const chart = document.querySelector('#customize-loss svg.marks');
    const shown = document.querySelector('#customize-loss').getBoundingClientRect();  // what is not clipped
    const legend = Array.from(chart.querySelectorAll('.role-legend-label text'))
        .filter(text => text.getBoundingClientRect().bottom <= shown.bottom).map(text => text.textContent);
    const labels = Array.from(chart.querySelectorAll('.role-axis-label text')).map(text => {
        const box = text.getBoundingClientRect();
        return [text.textContent, box.left, box.right, box.top];
    });
    const bottom = Math.max(...labels.map(label => label[3]));  // the x axis is the lowest row of labels
    const x = labels.filter(label => Math.abs(label[3] - bottom) < 2).sort((a, b) => a[1] - b[1]);
    return [legend, x.map(label => label.slice(0, 3))];
}"""


@pytest.fixture(scope="module")
def server() -> AppServer:
    return app_server()


def chromium_path() -> str:
    """Debian's Chromium (never a downloaded browser); without it the test fails on CI and is skipped elsewhere."""
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium


@pytest.fixture(scope="module")
def browser():
    chromium = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A page in a browser context of its own (closing the page's context closes it)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#text-photo")
    return page


@pytest.fixture()
def page(browser, server):
    page = open_page(browser, server.url)
    yield page
    page.context.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box and leave it (blur fires the slider's release event)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.blur()


def image_src(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").first.get_attribute("src") or ""


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def edit(page, tab: str, photo: Path) -> None:
    upload(page, f"{tab}-photo", photo)
    page.locator(f"#{tab}-photo img[src*='{photo.name}']").wait_for()  # uploaded before the click
    page.locator(f"#{tab}-run").click()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_reference_edit_views_video_mesh_and_named_downloads(page, server):
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.photo)

    page.locator("#reference-strip img").wait_for()
    page.locator("#reference-video video").wait_for()
    page.locator("#reference-model canvas").wait_for()
    page.locator("#reference-files").get_by_text(re.compile(r"\.ply")).wait_for()
    page.locator("#reference-status").get_by_text("mesh").wait_for()
    for elem_id, name in [("reference-aligned", "aligned.png"), ("reference-ref", "reference.png"),
                          ("reference-strip", "views.png"), ("reference-view", "view_yaw0_pitch0.png"),
                          ("reference-depth", "depth.png")]:
        assert image_src(page, elem_id).endswith("/" + name), elem_id
    assert (page.locator("#reference-video video").get_attribute("src") or "").endswith("/orbit.mp4")

    set_slider(page, "reference-yaw", 30)
    page.locator("#reference-view img[src$='/view_yaw30_pitch0.png']").wait_for()
    screenshot(page, "app_reference_edit.png")


def test_the_strength_slider_re_renders_without_encoding_and_the_before_after_shows(page, server, monkeypatch):
    encodes, encode = [], server.editor.encode
    monkeypatch.setattr(server.editor, "encode", lambda *args, **kwargs: encodes.append(1) or encode(*args, **kwargs))
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.photo)
    page.locator("#reference-view img[src$='/view_yaw0_pitch0.png']").wait_for()
    compare = page.locator("#reference-compare img")
    compare.nth(1).wait_for()
    assert [compare.nth(i).get_attribute("src").rsplit("/", 1)[-1] for i in range(2)] == [
        "aligned.png", "view_yaw0_pitch0.png"]  # before / after
    set_slider(page, "reference-strength", 0.3)
    page.locator("#reference-view img[src$='/view_yaw0_pitch0_strength0.3.png']").wait_for()
    page.locator("#reference-strip img[src$='/views_strength0.3.png']").wait_for()
    page.locator("#reference-compare img[src$='/view_yaw0_pitch0_strength0.3.png']").wait_for()
    page.locator("#reference-video video[src$='/orbit_strength0.3.mp4']").wait_for()  # made anew at 0.3
    page.locator("#reference-status").get_by_text("mesh").wait_for()
    assert len(encodes) == 1  # the edit's own encode only
    screenshot(page, "app_strength.png")


def test_text_edit_shows_one_progress_display_with_the_step_count(page, server):
    page.locator("#text-anchor-image img").wait_for()  # the page has loaded the anchor portrait (its own progress)
    page.locator("#text-instruction textarea").fill("make it a bronze statue with a blue hat")
    edit(page, "text", server.photo)
    seen: list[list[str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not page.locator("#text-strip img").count():
        seen.append(page.evaluate("""() => Array.from(document.querySelectorAll('.progress-text'))
            .map(e => `${(e.closest('[id]') || {}).id}: ${e.textContent.trim()}`)"""))
        time.sleep(0.1)
    busy = [displays for displays in seen if displays]
    assert busy, "no progress was shown"
    assert all(len(displays) == 1 and displays[0].startswith("text-status:") for displays in busy), busy
    assert any(re.search(r"\d+/20 steps", displays[0]) for displays in busy), busy
    page.locator("#text-model canvas").wait_for()
    assert "EG3D sample, seed 0" in page.locator("#text-status").inner_text()
    screenshot(page, "app_text_edit.png")


def test_stop_stops_the_work_and_the_next_edit_runs_at_once(page, server):
    open_tab(page, "Reference edit")
    page.get_by_text("Settings").nth(1).click()  # the accordion of this tab (the first is the text tab's)
    # the longest work on tiny weights, whatever the machine: a 384³ mesh (216 chunks), while a video takes seconds
    set_slider(page, "reference-mesh-resolution", 384)
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.photo)
    page.locator("#reference-status .progress-text").get_by_text(re.compile("chunk")).wait_for()
    page.locator("#reference-stop").click()
    page.locator("#reference-status").get_by_text("Stopped").wait_for()
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    start = time.perf_counter()
    client.predict(handle_file(server.photo), handle_file(server.reference), False, api_name="/edit_reference")
    seconds = time.perf_counter() - start
    print(f"after Stop, the next edit (another session) finished in {seconds:.1f} s")
    assert seconds < 20  # a 384³ mesh left running would hold the worker far longer
    time.sleep(1)
    assert page.locator("#reference-model canvas").count() == 0  # the stopped mesh never appeared
    errors = page.get_by_text(re.compile(r"^Error$"))
    assert errors.count() == 0, [toast.inner_text() for toast in errors.locator("xpath=../..").all()]
    screenshot(page, "app_stopped.png")


def test_a_file_that_is_not_an_image_is_refused_on_upload(page, server, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"PK\x03\x04 this is a zip file, not a picture")
    upload(page, "text-photo", fake)
    page.get_by_text(re.compile("not an image")).first.wait_for()
    time.sleep(0.5)
    assert page.locator("#text-photo img").count() == 0  # cleared: no broken preview


def test_a_noise_reference_gets_a_warning_on_upload(page, server, tmp_path):
    import numpy as np
    from PIL import Image

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise)
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", noise)
    page.get_by_text(re.compile("looks like noise")).first.wait_for()


def test_each_tab_keeps_a_refused_actions_message_in_its_status_line(page, server):
    """A refusal is a toast and, until the next action, a line in the status of its tab: no "Working…" and no error
    badge left behind. Checked 20 s after the first refusal, when the toasts have long gone."""
    refusals = {"text-status": "instruction is empty", "reference-status": "No face found",
                "customize-tune-status": "Generate the training pairs first",
                "customize-status": "Adapt a style first", "gallery-info": "There is no published edit",
                "gallery-message": "There is no published edit"}
    start = time.monotonic()
    set_slider(page, "text-yaw", 20)  # there is no edit to turn yet
    page.locator("#text-status").get_by_text("Run an edit first").wait_for()
    page.locator("#text-instruction textarea").fill("   ")
    edit(page, "text", server.photo)
    page.get_by_text("instruction is empty").first.wait_for()  # the toast
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.no_face)
    open_tab(page, "Customize")
    page.locator("#customize-generate").click()
    page.locator("#customize-tune-status").get_by_text("Type the instruction").wait_for()
    page.locator("#customize-adapt").click()  # the latest outcome replaces the previous one
    edit(page, "customize", server.photo)
    open_tab(page, "Gallery")
    page.locator("#gallery-id textarea").fill("0" * 32)
    page.locator("#gallery-open").click()
    page.get_by_text("Delete or report").click()
    page.locator("#gallery-delete").click()
    for elem_id, message in refusals.items():
        page.locator(f"#{elem_id}").get_by_text(message).wait_for(state="attached")
    time.sleep(max(0.0, start + 20 - time.monotonic()))
    statuses = {}
    for tab in ("Customize", "Reference edit", "Gallery", "Text edit"):  # what a person sees on each tab
        open_tab(page, tab)
        statuses |= {elem_id: page.locator(f"#{elem_id}").inner_text() for elem_id in refusals
                     if page.locator(f"#{elem_id}").is_visible()}
    assert set(statuses) == set(refusals), statuses
    for elem_id, message in refusals.items():
        assert message in statuses[elem_id] and "⚠️" in statuses[elem_id], statuses
        assert "Working" not in statuses[elem_id], statuses
    assert "Type the instruction" not in statuses["customize-tune-status"]
    badges = page.get_by_text(re.compile(r"^Error$"))
    assert badges.count() == 0, [badge.locator("xpath=../..").inner_text() for badge in badges.all()]
    screenshot(page, "app_refused.png")


def test_missing_weights_page_disables_the_actions_and_shows_no_server_path(browser, tmp_path):
    weights = tmp_path / "no-weights-here"
    gallery = Gallery(tmp_path / "gallery", sync=None)
    demo = build_demo(load_editor(weights), sessions=SessionFiles(tmp_path / "sessions"), gallery=gallery)
    url = serve(demo, gallery)
    try:
        page = open_page(browser, url)
        page.get_by_text("Editing is disabled").first.wait_for()
        for tab, name in (("text", "Text edit"), ("reference", "Reference edit")):
            open_tab(page, name)
            for button in (f"#{tab}-run", f"#{tab}-stop", f"#{tab}-publish"):
                assert page.locator(button).is_disabled(), button
        html = page.content()
        assert str(tmp_path) not in html  # the folder by its name only: where the files go, not the server's layout
        assert "no-weights-here/" in page.locator("#notice").inner_text()
        screenshot(page, "app_missing_weights.png")
        page.context.close()
    finally:
        demo.close()
        gallery.close()


def test_publish_open_the_permalink_and_delete_from_the_same_browser(browser, page, server):
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.photo)
    page.locator("#reference-status").get_by_text("mesh").wait_for()  # video and mesh made: they are published too
    page.locator("#reference-publish").click()
    link = page.locator("#reference-link a").first
    link.wait_for()
    url = link.get_attribute("href")
    assert url.startswith(server.url) and "?edit=" in url

    watcher = open_page(browser, server.url)  # another browser, on the Gallery tab
    open_tab(watcher, "Gallery")
    total = server.gallery.page(1, 1).total
    watcher.locator("#gallery-listing").get_by_text(f"· {total} published edits").wait_for()

    visitor = page.context.new_page()  # same browser: it keeps the owner token
    visitor.set_default_timeout(TIMEOUT_MS)
    visitor.goto(url)
    visitor.locator("#gallery-strip img").wait_for()  # the permalink opened the Gallery tab on its edit
    info = visitor.locator("#gallery-info").inner_text()
    assert "Reference edit" in info and "mesh" in info and "align_reference" not in info, info
    visitor.locator("#gallery-video video").wait_for()
    visitor.locator("#gallery-model canvas").wait_for()  # the mesh shows on a permalink
    visitor.locator("#gallery-tiles img").first.wait_for()
    screenshot(visitor, "app_gallery_permalink.png")
    visitor.get_by_text("Delete or report").click()
    message = visitor.locator("#gallery-message")
    visitor.locator("#gallery-reason textarea").fill("a test report")
    visitor.locator("#gallery-report").click()
    message.get_by_text("Thank you").wait_for()
    visitor.locator("#gallery-reason textarea").fill("")
    visitor.locator("#gallery-report").click()
    message.get_by_text("the reason is empty").wait_for()  # the latest outcome replaces the thanks
    assert "Thank you" not in message.inner_text()
    visitor.locator("#gallery-delete").click()
    message.get_by_text("Deleted").wait_for()
    record = url.split("edit=")[1]
    with pytest.raises(RecordNotFound, match="no published edit"):
        server.gallery.get(record)
    visitor.close()
    # the other browser's listing drops the deleted edit by itself, within a refresh interval
    watcher.locator("#gallery-listing").get_by_text(f"· {total - 1} published edits").wait_for(
        timeout=(LISTING_REFRESH_S + 20) * 1000)
    assert watcher.locator("#gallery-tiles img").count() == min(total - 1, 12)
    watcher.context.close()


def test_closing_the_page_removes_the_session_files(browser, server):
    before = set(server.sessions.root.iterdir()) if server.sessions.root.is_dir() else set()
    page = open_page(browser, server.url)
    open_tab(page, "Reference edit")
    upload(page, "reference-reference", server.reference)
    edit(page, "reference", server.photo)
    page.locator("#reference-strip img").wait_for()
    [folder] = [path for path in server.sessions.root.iterdir() if path not in before and path.is_dir()]
    assert any(folder.glob("*/views.png"))
    page.context.close()
    deadline = time.monotonic() + 90
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not folder.exists(), "the session's temporary files outlived the page"
    print(f"\nsession folder removed {90 - (deadline - time.monotonic()):.1f} s after the page closed")


def test_customize_tab_end_to_end(page, server):
    open_tab(page, "Customize")
    page.locator("#customize-instruction textarea").fill("make it golden")
    page.locator("#customize-generate").click()
    page.locator("#customize-tune-status").get_by_text("usable pairs").wait_for()
    assert page.locator("#customize-pairs img").count() >= 3
    page.locator("#customize-adapt").click()
    steps, curves = [], set()  # the steps the status line named during the fine-tune, the loss curves drawn meanwhile
    status, deadline = page.locator("#customize-tune-status"), time.monotonic() + 600
    while "held-out loss" not in (text := status.inner_text()) and time.monotonic() < deadline:
        step = re.search(r"step (\d+) of \d+", text)
        if step and int(step[1]) not in steps:
            steps.append(int(step[1]))
        curves.add(page.evaluate(LOSS_LINES))
        time.sleep(0.2)
    print(f"\nAdapt named steps {steps} before it ended, and drew {len(curves - {''})} different loss curves")
    assert len(steps) >= 3 and steps == sorted(steps) and len(curves - {""}) >= 3  # it reports during the chunk
    page.locator("#customize-style-file").get_by_text(re.compile(r"\.safetensors")).wait_for()
    time.sleep(1)  # the last chart drawn
    legend, x_labels = page.evaluate(LOSS_LABELS)
    assert legend == ["training", "held-out"]
    assert all(re.fullmatch(r"\d+", label) for label, _, _ in x_labels) and len(x_labels) >= 3, x_labels  # steps
    assert all(right < left for (_, _, right), (_, left, _) in zip(x_labels, x_labels[1:])), x_labels  # apart
    screenshot(page, "app_customize_adapted.png")
    edit(page, "customize", server.photo)  # Use this style: the reference defaults to a training edit
    page.locator("#customize-strip img").wait_for()
    page.locator("#customize-status").get_by_text("make it golden").wait_for()
    screenshot(page, "app_customize.png")
