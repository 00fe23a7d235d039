"""The Batch tab and the gallery's before / after in a real browser (Debian's Chromium through Playwright, the
in-process server of tests/app_server.py; the fixtures of tests/test_browser.py)."""
from __future__ import annotations

import re
import shutil

import pytest
from gradio_client import Client, handle_file

from tests import test_browser as shown
from tests.test_browser import TIMEOUT_MS, image_src, open_tab, screenshot, upload

pytestmark = pytest.mark.browser
browser, server, page = shown.browser, shown.server, shown.page  # the fixtures, shared


def test_the_batch_tab_edits_two_uploaded_photos_into_a_zip_with_a_summary(page, server, tmp_path):
    second = tmp_path / "second.jpg"
    shutil.copyfile(server.photo, second)
    open_tab(page, "Batch")
    page.locator("#batch-limits").get_by_text("photos per batch").wait_for()
    page.locator("#batch-files input[type=file]").set_input_files([str(server.photo), str(second)])
    page.locator("#batch-files tr.file").nth(1).wait_for()  # both uploaded (a name shows as stem and suffix)
    upload(page, "batch-reference", server.reference)
    page.locator(f"#batch-reference img[src*='{server.reference.name}']").wait_for()
    page.locator("#batch-run").click()
    page.locator("#batch-summary").get_by_text("edited=2").wait_for()
    page.locator("#batch-zip tr.file").wait_for()
    assert re.search(r"batch-\w+\s*\.zip", page.locator("#batch-zip").inner_text())
    assert "Done: 2 photos" in page.locator("#batch-status").inner_text()
    assert page.locator("#batch-gallery img").count() == 2
    screenshot(page, "app_batch.png")


def test_an_opened_gallery_edit_shows_its_before_and_after_side_by_side(browser, server):
    client = Client(server.url, verbose=False, download_files=str(server.folder / "downloads"))
    client.predict(handle_file(server.photo), handle_file(server.reference), False, api_name="/edit_reference")
    record = client.predict(True, api_name="/publish")["id"]  # the photo shared: it is the "before"
    visitor = shown.open_page(browser, f"{server.url}?edit={record}")
    visitor.set_default_timeout(TIMEOUT_MS)
    boxes = {}
    for elem_id in ("gallery-before", "gallery-reference", "gallery-after"):
        visitor.locator(f"#{elem_id} img").wait_for()
        boxes[elem_id] = visitor.locator(f"#{elem_id} img").bounding_box()
    assert image_src(visitor, "gallery-before").endswith("/photo.png")
    assert image_src(visitor, "gallery-after").endswith(f"/{record}-after.png")
    before, after = boxes["gallery-before"], boxes["gallery-after"]
    assert before["x"] + before["width"] <= after["x"] and abs(before["y"] - after["y"]) < before["height"], boxes
    screenshot(visitor, "app_gallery_before_after.png")
    visitor.context.close()
